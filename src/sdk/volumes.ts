import { homedir } from 'node:os';
import { resolve } from 'node:path';
import type { VolumeView } from '../api/volumes.js';
import { Api } from '../api/routes.js';
import type { RequestOptions } from './options.js';
import type { Transport } from './transport.js';

const { volumes } = Api;

/**
 * `-v SOURCE:/guest[:ro]` with a relative host folder (`./src`, `../x`, `.`, `~/x`) made absolute
 * here, where it means something: celld runs elsewhere and refuses relative host paths. A volume
 * name and an absolute path are left as they are.
 */
export function absoluteMount(text: string, cwd: string = process.cwd(), home: string = homedir()): string {
  const colon = text.indexOf(':');
  if (colon <= 0) return text;
  const source = text.slice(0, colon);
  const rest = text.slice(colon);
  if (source === '~' || source.startsWith('~/')) return resolve(home, source.slice(2)) + rest;
  if (source.startsWith('.')) return resolve(cwd, source) + rest;
  return text;
}

export interface CreateVolumeOptions extends RequestOptions {
  /** Default 10 GiB (sparse: the host gives it what is written). */
  sizeBytes?: number;
  /** `k=v` labels. */
  labels?: string[];
}

/** Named volumes: outlive VMs; one VM writes a volume at a time (docs/volumes.md). */
export class VolumesClient {
  constructor(private readonly transport: Transport) {}

  list(opts: RequestOptions = {}): Promise<VolumeView[]> {
    return this.transport.call(volumes.list, {}, opts);
  }

  get(name: string, opts: RequestOptions = {}): Promise<VolumeView> {
    return this.transport.call(volumes.get, { params: { name } }, opts);
  }

  create(name: string, opts: CreateVolumeOptions = {}): Promise<VolumeView> {
    const body = { name, ...(opts.sizeBytes !== undefined ? { sizeBytes: opts.sizeBytes } : {}), ...(opts.labels ? { labels: opts.labels } : {}) };
    return this.transport.call(volumes.create, { body }, opts);
  }

  /** Refused while a VM runs with it; while a stopped VM mounts it, refused unless `force`. */
  remove(name: string, opts: RequestOptions & { force?: boolean } = {}): Promise<void> {
    return this.transport.call(volumes.remove, { params: { name }, query: { force: opts.force } }, opts);
  }

  /** Writes the volume to a tar on celld's host (a path there; refused while a VM writes it). */
  export(name: string, file: string, opts: RequestOptions = {}): Promise<{ bytes: number }> {
    return this.transport.call(volumes.export, { params: { name }, body: { file } }, opts);
  }

  /** Reads a volume archive on celld's host; `name` renames it. */
  import(file: string, opts: RequestOptions & { name?: string } = {}): Promise<VolumeView> {
    return this.transport.call(volumes.import, { body: { file, ...(opts.name ? { name: opts.name } : {}) } }, opts);
  }

  /** Removes every volume no VM mounts; resolves with their names. */
  async prune(opts: RequestOptions = {}): Promise<string[]> {
    return (await this.transport.call(volumes.prune, {}, opts)).removed;
  }
}
