import { CellError, ErrorCodes } from '../../domain/errors.js';
import { isDigest, sha256Digest, type Digest } from '../digest.js';
import { MANIFEST_ACCEPT } from '../media-types.js';
import { MAX_MANIFEST_BYTES } from '../manifest.js';
import { errorText, registryFailure, RegistryTransport, type TransportOptions } from './transport.js';

/**
 * The OCI distribution API calls cellvm makes, for one registry: manifests (GET/HEAD/PUT), blob
 * HEAD and GET (the streaming download with checks lives in blob-download.ts), and uploads
 * (POST, optionally cross-mounting from another repository, then PATCH and PUT).
 */
export interface FetchedManifest {
  bytes: Buffer;
  digest: Digest;
  contentType: string | undefined;
}

export function pullScope(repository: string): string {
  return `repository:${repository}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${repository}:pull,push`;
}

export class RegistryClient {
  readonly transport: RegistryTransport;

  constructor(opts: TransportOptions) {
    this.transport = new RegistryTransport(opts);
  }

  get registry(): string {
    return this.transport.opts.registry;
  }

  /** GET /v2/: whether the registry answers and the credentials (if any) are accepted. */
  async ping(scopes: readonly string[] = []): Promise<void> {
    const res = await this.transport.request('/v2/', { scopes });
    await res.body?.cancel();
    if (!res.ok) throw registryFailure(res, `${this.registry}/v2/`, '');
  }

  /** The digest a tag points at, without downloading the manifest; undefined if the registry does not say. */
  async headManifest(repository: string, selector: string): Promise<Digest | undefined> {
    const res = await this.transport.request(`/v2/${repository}/manifests/${selector}`, {
      method: 'HEAD',
      scopes: [pullScope(repository)],
      headers: { accept: MANIFEST_ACCEPT },
    });
    if (res.status === 404) throw notFound(this.registry, repository, selector);
    if (!res.ok) return undefined;
    const digest = res.headers.get('docker-content-digest');
    return isDigest(digest) ? digest : undefined;
  }

  /** Fetches a manifest; when asked by digest (or the registry names one), the bytes must match it. */
  async getManifest(repository: string, selector: string): Promise<FetchedManifest> {
    const what = `manifest ${this.registry}/${repository}:${selector}`;
    const res = await this.transport.request(`/v2/${repository}/manifests/${selector}`, {
      scopes: [pullScope(repository)],
      headers: { accept: MANIFEST_ACCEPT },
    });
    if (res.status === 404) {
      await res.body?.cancel();
      throw notFound(this.registry, repository, selector);
    }
    if (!res.ok) throw registryFailure(res, what, await errorText(res));
    const bytes = await readCapped(res, MAX_MANIFEST_BYTES, what);
    const digest = sha256Digest(bytes);
    const expected = isDigest(selector) ? selector : res.headers.get('docker-content-digest');
    if (expected && expected.startsWith('sha256:') && expected !== digest) {
      throw new CellError(ErrorCodes.DIGEST_MISMATCH, `${what}: content digest ${digest} does not match ${expected}`, { expected, actual: digest });
    }
    return { bytes, digest, contentType: res.headers.get('content-type') ?? undefined };
  }

  /** Blob size if the repository has it. */
  async headBlob(repository: string, digest: string, scopes: readonly string[] = [pullScope(repository)]): Promise<number | undefined> {
    const res = await this.transport.request(`/v2/${repository}/blobs/${digest}`, { method: 'HEAD', scopes });
    if (res.status === 404) return undefined;
    if (!res.ok) throw registryFailure(res, `blob ${digest}`, '');
    return Number(res.headers.get('content-length') ?? NaN);
  }

  /**
   * Starts an upload. With `mountFrom`, asks to link the blob from another repository of the same
   * registry: returns 'mounted' when that worked, else an upload URL as without it.
   */
  async startUpload(repository: string, opts: { mount?: { digest: string; from: string } } = {}): Promise<{ mounted: true } | { mounted: false; location: string }> {
    const scopes = [pushScope(repository), ...(opts.mount ? [pullScope(opts.mount.from)] : [])];
    const query = opts.mount ? `?mount=${encodeURIComponent(opts.mount.digest)}&from=${encodeURIComponent(opts.mount.from)}` : '';
    const res = await this.transport.request(`/v2/${repository}/blobs/uploads/${query}`, { method: 'POST', scopes, retry: true });
    await res.body?.cancel().catch(() => undefined);
    if (res.status === 201 && opts.mount) return { mounted: true };
    const location = res.headers.get('location');
    if (res.status !== 202 || !location) throw registryFailure(res, `upload to ${this.registry}/${repository}`, 'no upload location');
    return { mounted: false, location: this.transport.url(location) };
  }

  /** Sends the blob's bytes in one PATCH, then closes the upload with PUT ?digest=. */
  async finishUpload(repository: string, location: string, digest: string, size: number, body: () => RequestInit['body']): Promise<void> {
    const scopes = [pushScope(repository)];
    const patch = await this.transport.request(location, {
      method: 'PATCH',
      scopes,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size), ...(size > 0 ? { 'content-range': `0-${size - 1}` } : {}) },
      body: body(),
      retry: false,
    });
    if (patch.status !== 202) throw registryFailure(patch, `upload of ${digest}`, await errorText(patch));
    await patch.body?.cancel().catch(() => undefined);
    const next = this.transport.url(patch.headers.get('location') ?? location);
    const url = new URL(next);
    url.searchParams.set('digest', digest);
    const put = await this.transport.request(url.toString(), { method: 'PUT', scopes, headers: { 'content-length': '0' }, retry: false });
    if (put.status !== 201) throw registryFailure(put, `upload of ${digest}`, await errorText(put));
    await put.body?.cancel().catch(() => undefined);
  }

  async putManifest(repository: string, selector: string, bytes: Buffer, mediaType: string): Promise<Digest> {
    const res = await this.transport.request(`/v2/${repository}/manifests/${selector}`, {
      method: 'PUT',
      scopes: [pushScope(repository)],
      headers: { 'content-type': mediaType },
      body: bytes,
      retry: true,
    });
    if (res.status !== 201) throw registryFailure(res, `manifest ${this.registry}/${repository}:${selector}`, await errorText(res));
    await res.body?.cancel().catch(() => undefined);
    const digest = sha256Digest(bytes);
    const said = res.headers.get('docker-content-digest');
    if (said && said !== digest) throw new CellError(ErrorCodes.DIGEST_MISMATCH, `the registry stored manifest ${said}, we sent ${digest}`);
    return digest;
  }
}

function notFound(registry: string, repository: string, selector: string): CellError {
  return new CellError(ErrorCodes.IMAGE_NOT_FOUND, `image ${registry}/${repository}${isDigest(selector) ? '@' : ':'}${selector} not found in the registry`, {
    registry,
    repository,
    selector,
  });
}

export async function readCapped(res: Response, max: number, what: string): Promise<Buffer> {
  const declared = Number(res.headers.get('content-length') ?? NaN);
  if (declared > max) {
    await res.body?.cancel();
    throw new CellError(ErrorCodes.SIZE_LIMIT, `${what} is ${declared} bytes, more than the ${max} allowed`);
  }
  const parts: Buffer[] = [];
  let total = 0;
  if (res.body) {
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      total += chunk.length;
      if (total > max) throw new CellError(ErrorCodes.SIZE_LIMIT, `${what} is more than the ${max} bytes allowed`);
      parts.push(Buffer.from(chunk));
    }
  }
  return Buffer.concat(parts);
}
