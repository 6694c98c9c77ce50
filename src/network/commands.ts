import { execFile } from 'node:child_process';
import { CellError, ErrorCodes } from '../domain/errors.js';

/**
 * The kernel's networking is driven through its own tools (`ip`, `nft`, `nsenter`, `sysctl`):
 * netlink from Node would need a native module per message type, and these tools are what an
 * operator reads in the docs and runs to look. Each call is bounded in time and output.
 */
export function tool(cmd: string, args: readonly string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 10_000, maxBuffer: 4 * 1024 * 1024, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      const why = (stderr || err.message).trim().split('\n').slice(-2).join('; ');
      reject(
        new CellError(
          missing ? ErrorCodes.HOST_MISSING_DEPENDENCY : ErrorCodes.INTERNAL,
          missing ? `${cmd} is not installed (run: cell setup)` : `${cmd} ${args.slice(0, 6).join(' ')}: ${why}`,
        ),
      );
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

/** `ip -batch -` in celld's own namespace, or in `netns`. */
export const ipBatch = (lines: readonly string[], netns?: string) => tool('ip', [...(netns ? ['-n', netns] : []), '-batch', '-'], lines.join('\n') + '\n');

/** A command run inside network namespace `netns` (its mount namespace stays celld's). */
export const inNetns = (netns: string, cmd: string, args: readonly string[], input?: string) => tool('nsenter', [`--net=/run/netns/${netns}`, '--', cmd, ...args], input);

/** Loads an nftables ruleset atomically (all of it or none). */
export const nft = (ruleset: string, netns?: string) => (netns ? inNetns(netns, 'nft', ['-f', '-'], ruleset) : tool('nft', ['-f', '-'], ruleset));
