/**
 * What a pull or import reports as it goes, so a CLI can draw one bar per layer. Events for one
 * blob arrive in order (`downloading`... then `done`, or a single `cached`).
 */
export type PullProgress =
  | { phase: 'resolved'; reference: string; digest: string; platform: string | null; blobs: { digest: string; size: number; kind: 'config' | 'layer' }[] }
  | { phase: 'blob'; digest: string; done: number; total: number; status: 'cached' | 'downloading' | 'done' }
  | { phase: 'unpack'; layer: number; layers: number; digest: string }
  | { phase: 'disk'; status: 'building' | 'cached' }
  | { phase: 'done'; reference: string; digest: string; diskPath: string };

export type PullProgressFn = (event: PullProgress) => void;

/**
 * A named step of a pull or import (`pull:resolved`, ...) where a crash drill may stop the daemon
 * (the engine's EngineContext.checkpoint); a no-op otherwise.
 */
export type Checkpoint = (step: string) => Promise<void>;

export const noCheckpoint: Checkpoint = async () => {};
