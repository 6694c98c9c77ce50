import type { PortSpec } from '../domain/network.js';
import type { HealthCheck } from '../domain/health.js';
import { basename, dirname, isAbsolute, posix } from 'node:path';
import { createHash } from 'node:crypto';
import type { ActionSource, ActionSpec } from '../domain/action.js';
import { isWithin, parseBuildFile, type BuildPlan, type BuildStep } from '../domain/build-file.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { compatKeyHash, type SnapshotRecord } from '../domain/snapshot.js';
import { mergeEnv } from '../domain/vm.js';
import type { Actions } from './actions.js';
import { compatKey, type EngineContext } from './context.js';
import type { Snapshots } from './snapshots.js';
import type { OutputSink } from './output.js';
import { CELLD_HOST_FS, hostPathError, type HostFs } from './host-fs.js';

export type BuildEvent =
  | { type: 'base'; description: string }
  | { type: 'step'; index: number; number: number; total: number; kind: BuildStep['kind']; description: string; line: number | undefined }
  | {
      type: 'step-done';
      index: number;
      number: number;
      total: number;
      /** ran: a VM ran it; cached: its snapshot came from the cache; metadata: nothing to run. */
      outcome: 'ran' | 'cached' | 'metadata';
      snapshot: string | null;
      durationMs: number;
    }
  | { type: 'step-failed'; index: number; number: number; exitCode: number; message: string };

export interface BuildOptions {
  tag?: string;
  /** Run every step, ignoring the cache (results replace the cached ones). */
  noCache?: boolean;
  target?: string;
  sink?: OutputSink;
  signal?: AbortSignal;
  onEvent?(event: BuildEvent): void;
  /** Whose file access reads the files `copy` steps name (engine/host-fs.ts); celld's own by default. */
  host?: HostFs;
}

export interface BuildResult {
  /** The final snapshot (null when a step failed). */
  snapshot: SnapshotRecord | null;
  /** 0, or the failing step's exit code. */
  exitCode: number;
  ran: number;
  cached: number;
  durationMs: number;
  /** The cache key of the final step's result: what templates use as their inputs' hash. */
  key: string | null;
}

/**
 * `cell build`: each step of the chain to the target is an action on the previous step's
 * snapshot, cached by key. `env` and `workdir` steps run nothing: they change what later steps
 * run with (and so their keys); if they come last, a derived snapshot carries them.
 */
export class Builds {
  constructor(
    private readonly ctx: EngineContext,
    private readonly actions: Actions,
    private readonly snapshots: Snapshots,
  ) {}

  /** Reads and checks a build file (errors carry line numbers). */
  async load(file: string, target?: string, host: HostFs = CELLD_HOST_FS): Promise<BuildPlan> {
    return parseBuildFile(basename(file), await readDefinition(file, 'build file', host), dirname(file), { target });
  }

  async build(plan: BuildPlan, opts: BuildOptions = {}): Promise<BuildResult> {
    const started = performance.now();
    const emit = opts.onEvent ?? (() => {});
    const baseDescription = 'image' in plan.base ? plan.base.image : `snapshot ${plan.base.snapshot}`;
    emit({ type: 'base', description: baseDescription });
    let source: ActionSource = plan.base;
    let current: SnapshotRecord | null = 'snapshot' in plan.base ? this.snapshots.resolve(plan.base.snapshot) : null;
    let pendingEnv: string[] = [];
    let pendingWorkdir: string | undefined;
    let workdir = current?.spec.workingDir ?? '/';
    let key: string | null = null;
    let ran = 0;
    let cached = 0;
    const total = plan.chain.length;
    for (const [position, index] of plan.chain.entries()) {
      const step = plan.steps[index]!;
      const number = position + 1;
      const stepStarted = performance.now();
      emit({ type: 'step', index, number, total, kind: step.kind, description: describeStep(step), line: step.line });
      if (step.kind === 'env' || step.kind === 'workdir') {
        if (step.kind === 'env') pendingEnv = mergeEnv(pendingEnv, step.env);
        else pendingWorkdir = workdir = posix.resolve(workdir, step.dir);
        emit({ type: 'step-done', index, number, total, outcome: 'metadata', snapshot: null, durationMs: performance.now() - stepStarted });
        continue;
      }
      if (step.kind === 'copy') await assertInContext(opts.host ?? CELLD_HOST_FS, plan.contextDir, step.hostPath, step.line);
      const spec: ActionSpec = {
        source,
        cmd: step.kind === 'run' ? step.cmd : [],
        env: pendingEnv,
        workingDir: pendingWorkdir,
        ...(step.kind === 'run'
          ? { timeoutSec: step.timeoutSec, detach: step.detach, ready: step.ready, user: step.user }
          : { inject: { hostPath: step.hostPath, guestPath: step.to } }),
        ...('image' in source ? { cpus: plan.cpus, memoryMib: plan.memoryMib, ...(plan.volumes ? { volumes: plan.volumes } : {}) } : {}),
      };
      let result;
      try {
        result = await this.actions.run(
          spec,
          { mode: 'cache', refresh: opts.noCache },
          { sink: opts.sink, signal: opts.signal, vmName: `build-step${index + 1}`, host: opts.host },
        );
      } catch (err) {
        const message = (err as Error).message;
        emit({ type: 'step-failed', index, number, exitCode: 1, message });
        throw err;
      }
      if (result.exitCode !== 0 || !result.snapshot) {
        const message = `step ${number}/${total} (${describeStep(step)}) exited with code ${result.exitCode}`;
        emit({ type: 'step-failed', index, number, exitCode: result.exitCode, message });
        return { snapshot: null, exitCode: result.exitCode, ran: ran + 1, cached, durationMs: performance.now() - started, key: null };
      }
      if (result.cached) cached++;
      else ran++;
      current = result.snapshot;
      key = result.key;
      source = { snapshot: current.id };
      workdir = current.spec.workingDir;
      pendingEnv = [];
      pendingWorkdir = undefined;
      emit({
        type: 'step-done',
        index,
        number,
        total,
        outcome: result.cached ? 'cached' : 'ran',
        snapshot: current.id,
        durationMs: performance.now() - stepStarted,
      });
      await this.ctx.checkpoint('build:step-done');
    }
    if (!current) throw new CellError(ErrorCodes.BAD_BUILD_FILE, 'a build on an image needs at least one run or copy step');
    if (plan.ports && !current.spec.networks?.length) {
      throw new CellError(ErrorCodes.BAD_BUILD_FILE, `ports = [...] needs a network, but the build's VMs have none (${this.ctx.network.status.reason})`);
    }
    const portsChange = plan.ports && JSON.stringify(plan.ports) !== JSON.stringify(current.spec.ports ?? null);
    const healthChange = plan.health && JSON.stringify(plan.health) !== JSON.stringify(current.spec.health ?? null);
    if (pendingEnv.length > 0 || pendingWorkdir !== undefined || portsChange || healthChange) {
      ({ snapshot: current, key } = await this.carryMetadata(current, pendingEnv, pendingWorkdir, portsChange ? plan.ports : undefined, healthChange ? plan.health : undefined));
    }
    if (opts.tag) current = this.snapshots.tag(current.id, opts.tag);
    return { snapshot: current, exitCode: 0, ran, cached, durationMs: performance.now() - started, key };
  }

  /** Trailing env/workdir steps: a derived snapshot, cached like a step so rebuilds reuse it. */
  private async carryMetadata(
    source: SnapshotRecord,
    env: string[],
    workingDir: string | undefined,
    ports?: PortSpec[],
    health?: HealthCheck,
  ): Promise<{ snapshot: SnapshotRecord; key: string }> {
    const ready = await this.ctx.host.ensure();
    const spec = { env: mergeEnv(source.spec.env, env), workingDir: workingDir ?? source.spec.workingDir, ...(ports ? { ports } : {}), ...(health ? { health } : {}) };
    const key = createHash('sha256')
      // Ports and the health check join the key only when there are some: keys of builds without them stay as they were.
      .update(JSON.stringify(['derive', source.id, [...spec.env].sort(), spec.workingDir, compatKeyHash(compatKey(this.ctx, ready)), ...(ports ? [ports] : []), ...(health ? [{ health }] : [])]))
      .digest('hex');
    return this.ctx.locks.run(`action:${key}`, async () => {
      const hit = this.actions.lookup(key);
      if (hit) return { snapshot: hit, key };
      const description = `${source.name}: set ${[...env, ...(workingDir ? [`workdir ${workingDir}`] : []), ...(ports ? [`ports ${ports.map((p) => `${p.guestPort}/${p.protocol}`).join(',')}`] : []), ...(health ? ['healthcheck'] : [])].join(' ')}`;
      const snapshot = await this.snapshots.derive(source.id, spec, this.actions.snapshotName(key), { key, description, replace: false });
      await this.ctx.checkpoint('build:derived');
      return { snapshot, key };
    });
  }
}

/** One line saying what a step does, as build output shows it. */
export function describeStep(step: BuildStep): string {
  switch (step.kind) {
    case 'run': {
      const cmd = step.cmd.length === 3 && step.cmd[0] === '/bin/sh' && step.cmd[1] === '-c' ? step.cmd[2]! : JSON.stringify(step.cmd);
      return `RUN ${cmd}${step.detach ? ' (detached)' : ''}${step.ready ? ' + ready check' : ''}`;
    }
    case 'copy':
      return `COPY ${step.hostPath}${step.to ? ` -> ${step.to}` : ''}`;
    case 'env':
      return `ENV ${step.env.join(' ')}`;
    case 'workdir':
      return `WORKDIR ${step.dir}`;
  }
}

/** A copy path that stays in the build file's folder by name must stay there through symlinks too. */
async function assertInContext(host: HostFs, contextDir: string, hostPath: string, line: number | undefined): Promise<void> {
  const [root, real] = await Promise.all([host.realpath(contextDir), host.realpath(hostPath).catch(() => hostPath)]);
  if (!isWithin(root, real)) {
    throw new CellError(
      ErrorCodes.BAD_BUILD_FILE,
      `${line ? `line ${line}: ` : ''}copy ${hostPath} leads (through a symlink) to ${real}, outside the build file's folder ${root}`,
    );
  }
}

/** The text of a build or template file on celld's host (the CLI sends absolute paths), read with the caller's access. */
export async function readDefinition(file: string, what: string, host: HostFs): Promise<string> {
  if (!isAbsolute(file)) throw new CellError(ErrorCodes.INVALID_ARGUMENT, `the ${what} path must be absolute: ${file}`);
  return (await host.readFile(file).catch(hostPathError(`the ${what} ${file}`))).toString('utf8');
}
