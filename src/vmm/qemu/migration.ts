import { CellError, ErrorCodes } from '../../domain/errors.js';
import type { QmpClient } from './qmp.js';

interface MigrationStatus {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

/** POSIX shell single-quoting for the `exec:` migration URI (QEMU runs it with /bin/sh -c). */
function shellQuote(path: string): string {
  return `'${path.replace(/'/g, `'\\''`)}'`;
}

async function setIgnoreShared(qmp: QmpClient, ignoreShared: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [{ capability: 'x-ignore-shared', state: ignoreShared }],
  });
}

async function waitMigration(qmp: QmpClient, what: string, timeoutMs: number): Promise<MigrationStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await qmp.execute<MigrationStatus>('query-migrate');
    if (status.status === 'completed') return status;
    if (status.status === 'failed' || status.status === 'cancelled') {
      throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what} failed: ${status['error-desc'] ?? status.status}`);
    }
    if (Date.now() > deadline) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `${what} did not finish within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Saves a paused guest's device state (and its RAM, unless the RAM is a shared file that
 * `ignoreShared` leaves out) to `statePath`. The bandwidth cap is lifted: the default 128 MiB/s
 * would make a full-RAM save of a 256 MiB guest take seconds.
 */
export async function saveState(qmp: QmpClient, statePath: string, opts: { ignoreShared: boolean; timeoutMs?: number }): Promise<void> {
  await setIgnoreShared(qmp, opts.ignoreShared);
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 64 * 1024 * 1024 * 1024 });
  await qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` });
  await waitMigration(qmp, 'saving the VM state', opts.timeoutMs ?? 60_000);
}

/**
 * Loads state saved by `saveState` into a QEMU started with `-incoming defer -S` and the same
 * devices. Resolves with the guest paused; the caller resumes it with `cont`. A corrupt or
 * truncated state file makes QEMU fail the load (and exit): the error says so.
 */
export async function restoreState(qmp: QmpClient, statePath: string, opts: { ignoreShared: boolean; timeoutMs?: number }): Promise<void> {
  await setIgnoreShared(qmp, opts.ignoreShared);
  await qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    const { status } = await qmp.execute<{ status: string }>('query-status').catch((err: unknown) => {
      throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `restoring the VM state failed: QEMU rejected the state file (${(err as Error).message})`);
    });
    if (status !== 'inmigrate') {
      if (status === 'paused' || status === 'prelaunch' || status === 'running') return;
      throw new CellError(ErrorCodes.SNAPSHOT_FAILED, `restoring the VM state failed: the guest ended in state "${status}"`);
    }
    if (Date.now() > deadline) throw new CellError(ErrorCodes.SNAPSHOT_FAILED, 'restoring the VM state took too long');
    await new Promise((r) => setTimeout(r, 1));
  }
}
