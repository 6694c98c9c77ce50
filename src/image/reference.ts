import { CellError, ErrorCodes } from '../domain/errors.js';
import { checkDigest, type Digest } from './digest.js';

/**
 * Image references parsed the way Docker does: `busybox` is docker.io/library/busybox:latest, the
 * first component is a registry only when it looks like a host (has a `.` or `:`, or is
 * `localhost`), a tag defaults to `latest` unless a digest is given, and a digest wins over a tag.
 */
export interface ImageReference {
  /** As the user names it: `docker.io`, `ghcr.io`, `127.0.0.1:5000`. */
  registry: string;
  /** Path inside the registry: `library/busybox`. */
  repository: string;
  tag?: string;
  digest?: Digest;
}

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_API = 'registry-1.docker.io';
const DEFAULT_TAG = 'latest';
const MAX_NAME = 255;

const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;

function invalid(input: string, why: string): CellError {
  return new CellError(ErrorCodes.INVALID_ARGUMENT, `invalid image reference "${input}": ${why}`, { reference: input });
}

export function parseReference(input: string): ImageReference {
  const text = input.trim();
  if (!text) throw invalid(input, 'it is empty');
  if (/\s/.test(text)) throw invalid(input, 'it contains white space');

  let rest = text;
  let digest: Digest | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    try {
      digest = checkDigest(rest.slice(at + 1), `image reference "${input}"`);
    } catch {
      throw invalid(input, `${rest.slice(at + 1) || 'the digest'} is not a sha256 digest (sha256:<64 hex digits>)`);
    }
    rest = rest.slice(0, at);
  }

  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(input, `tag "${tag}" may hold only letters, digits, '_', '.', '-' (at most 128, not starting with '.' or '-')`);
  }

  const parts = rest.split('/');
  let registry = DOCKER_HUB;
  const first = parts[0]!;
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    if (!HOST.test(first)) throw invalid(input, `"${first}" is not a valid registry host`);
    registry = first;
    parts.shift();
  }
  if (registry === 'index.docker.io' || registry === DOCKER_HUB_API) registry = DOCKER_HUB;
  if (parts.length === 0 || parts.some((p) => p === '')) throw invalid(input, 'the repository name has an empty component');
  for (const p of parts) {
    if (!COMPONENT.test(p)) {
      const why = /[A-Z]/.test(p) ? 'repository names must be lowercase' : `"${p}" is not a valid name component`;
      throw invalid(input, why);
    }
  }
  if (registry === DOCKER_HUB && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (repository.length > MAX_NAME) throw invalid(input, `the repository name is longer than ${MAX_NAME} characters`);

  if (!tag && !digest) tag = DEFAULT_TAG;
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest ? { digest } : {}) };
}

/** The full, unambiguous form: `docker.io/library/busybox:latest`, `host:5000/a/b@sha256:...`. */
export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

/** What a registry request names: the digest if there is one, else the tag. */
export function manifestSelector(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG;
}

/** The host the registry API answers on (Docker Hub's API is not on docker.io itself). */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}
