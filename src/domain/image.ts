/** The parts of an OCI image config that decide how a VM's main command runs. */
export interface ImageConfig {
  Entrypoint?: string[] | null;
  Cmd?: string[] | null;
  Env?: string[] | null;
  WorkingDir?: string;
  User?: string;
}

export interface ImageRecord {
  reference: string;
  digest: string;
  diskPath: string;
  sizeBytes: number;
  config: ImageConfig;
  builtin: boolean;
  createdAt: string;
  lastUsed: string | null;
}

/**
 * Docker's rules for the command a container runs: the user's command replaces Cmd; Entrypoint
 * (if any) is prefixed to whichever applies.
 */
export function effectiveCommand(config: ImageConfig, userCmd: readonly string[]): string[] {
  const entrypoint = config.Entrypoint ?? [];
  const cmd = userCmd.length > 0 ? userCmd : (config.Cmd ?? []);
  return [...entrypoint, ...cmd];
}
