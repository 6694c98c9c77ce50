import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/**
 * A network namespace of the test's own, joined to this host by a veth pair on a private /30:
 * a "remote" address that is not loopback, without sending a packet anywhere else. `remove`
 * deletes the namespace and both veth ends.
 */
export interface TestNetns {
  name: string;
  hostAddress: string;
  nsAddress: string;
  remove(): void;
}

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });

export function createNetns(): TestNetns {
  const tag = randomBytes(3).toString('hex');
  const name = `cellt-${tag}`;
  const hostIf = `vh${tag}`;
  const nsIf = `vn${tag}`;
  // 10.213.X.0/30 with X from the tag: two test files at once do not collide.
  const x = parseInt(tag.slice(0, 2), 16);
  const hostAddress = `10.213.${x}.1`;
  const nsAddress = `10.213.${x}.2`;
  const remove = () => {
    try {
      ip('link', 'del', hostIf);
    } catch {
      /* gone with the namespace */
    }
    try {
      ip('netns', 'del', name);
    } catch {
      /* never made */
    }
  };
  try {
    ip('netns', 'add', name);
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    ip('link', 'set', nsIf, 'netns', name);
    ip('addr', 'add', `${hostAddress}/30`, 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    ip('netns', 'exec', name, 'ip', 'addr', 'add', `${nsAddress}/30`, 'dev', nsIf);
    ip('netns', 'exec', name, 'ip', 'link', 'set', nsIf, 'up');
    ip('netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up');
  } catch (err) {
    remove();
    throw err;
  }
  return { name, hostAddress, nsAddress, remove };
}
