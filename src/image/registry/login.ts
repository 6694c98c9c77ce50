import { CellError, ErrorCodes } from '../../domain/errors.js';
import { RegistryClient } from './client.js';
import { removeCredential, registryKey, saveCredential } from './credentials.js';
import type { RetryPolicy } from './retry.js';

/**
 * `login` checks the user and password against the registry before storing them (mode 0600 in
 * cellvm's credential file); `logout` forgets them. Verification is GET /v2/ with the credential:
 * a basic-auth registry checks it there, a token registry when the token is requested.
 */
export async function login(opts: {
  registry: string;
  username: string;
  password: string;
  credentialsPath: string;
  insecureRegistries?: readonly string[];
  retry?: RetryPolicy;
}): Promise<void> {
  if (!opts.username || opts.username.includes(':')) {
    throw new CellError(ErrorCodes.INVALID_ARGUMENT, 'the user name must be non-empty and may not contain ":"');
  }
  const registry = registryKey(opts.registry);
  const client = new RegistryClient({
    registry,
    credential: { username: opts.username, password: opts.password },
    ...(opts.insecureRegistries ? { insecureRegistries: opts.insecureRegistries } : {}),
    ...(opts.retry ? { retry: opts.retry } : {}),
  });
  try {
    await client.ping();
  } catch (err) {
    if (err instanceof CellError && err.code === ErrorCodes.UNAUTHORIZED) {
      throw new CellError(ErrorCodes.UNAUTHORIZED, `login to ${registry} failed: wrong user name or password`, { registry }, { cause: err });
    }
    throw err;
  }
  await saveCredential(opts.credentialsPath, registry, { username: opts.username, password: opts.password });
}

export async function logout(opts: { registry: string; credentialsPath: string }): Promise<boolean> {
  return removeCredential(opts.credentialsPath, opts.registry);
}
