import type { RouteDef } from './contract.js';
import { actions, builds, cache } from './builds.js';
import { events } from './events.js';
import { files } from './files.js';
import { images, registries } from './images.js';
import { networks } from './networks.js';
import { volumes } from './volumes.js';
import { snapshots } from './snapshots.js';
import { system } from './system.js';
import { templates } from './templates.js';
import { tokens } from './tokens.js';
import { vms } from './vms.js';

/** Every route of celld's API, by resource: what the server registers and the SDK calls. */
export const Api = { system, vms, files, snapshots, images, registries, actions, builds, cache, templates, networks, volumes, events, tokens } as const;

/** The route table as a flat list, in declaration order (OpenAPI, the server's registration check). */
export function allRoutes(): RouteDef[] {
  return Object.values(Api).flatMap((group) => Object.values(group) as RouteDef[]);
}
