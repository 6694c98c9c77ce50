import { Type, type Static } from '@sinclair/typebox';
import { created, empty, json, ndjson, route } from './contract.js';
import { event, PullEvent, RefParams, RemoveQuery } from './common.js';

/** Images (pull, import, push, export, prune, remove) and registry credentials. */

export const Image = Type.Object({
  reference: Type.String(),
  digest: Type.String(),
  sizeBytes: Type.Integer(),
  builtin: Type.Boolean(),
  createdAt: Type.String(),
  lastUsed: Type.Union([Type.String(), Type.Null()]),
});
export type Image = Static<typeof Image>;

export const ImageRef = Type.Object({ reference: Type.String(), digest: Type.String(), sizeBytes: Type.Integer() });
export type ImageRef = Static<typeof ImageRef>;

/** Hosts this call may reach over plain http (besides loopback and celld's own list). */
const Insecure = Type.Optional(Type.Array(Type.String({ minLength: 1 })));

export const PullRequest = Type.Object(
  { reference: Type.String({ minLength: 1 }), platform: Type.Optional(Type.String()), insecureRegistries: Insecure },
  { additionalProperties: false },
);
export type PullRequest = Static<typeof PullRequest>;

export const ImageImportRequest = Type.Object(
  { file: Type.String({ minLength: 1 }), reference: Type.Optional(Type.String()) },
  { additionalProperties: false },
);
export const PushRequest = Type.Object(
  { reference: Type.String({ minLength: 1 }), target: Type.Optional(Type.String({ minLength: 1 })), insecureRegistries: Insecure },
  { additionalProperties: false },
);
export const ImageExportRequest = Type.Object({ reference: Type.String({ minLength: 1 }), file: Type.String({ minLength: 1 }) }, { additionalProperties: false });
export const ImagePruneRequest = Type.Object({ maxBytes: Type.Optional(Type.Integer({ minimum: 0 })) }, { additionalProperties: false });
export const LoginRequest = Type.Object(
  { registry: Type.String({ minLength: 1 }), username: Type.String({ minLength: 1 }), password: Type.String(), insecureRegistries: Insecure },
  { additionalProperties: false },
);
export const LogoutRequest = Type.Object({ registry: Type.String({ minLength: 1 }) }, { additionalProperties: false });

export const PullStreamEvent = Type.Union([PullEvent, event('image', { image: ImageRef }), event('done', {})]);
export type PullStreamEvent = Static<typeof PullStreamEvent>;

export const images = {
  list: route({ method: 'GET', path: '/v1/images', summary: 'local images', reply: json(Type.Array(Image)) }),
  pull: route({ method: 'POST', path: '/v1/images/pull', summary: 'pull an image from a registry, progress streamed', body: PullRequest, reply: ndjson(PullStreamEvent) }),
  import: route({ method: 'POST', path: '/v1/images/import', summary: "import an OCI archive on celld's host", body: ImageImportRequest, reply: created(ImageRef) }),
  push: route({
    method: 'POST',
    path: '/v1/images/push',
    summary: 'push a local image to a registry (to target, default: its own reference)',
    body: PushRequest,
    reply: json(Type.Object({ digest: Type.String(), reference: Type.String() })),
  }),
  export: route({
    method: 'POST',
    path: '/v1/images/export',
    summary: "write an image as an OCI archive on celld's host",
    body: ImageExportRequest,
    reply: json(Type.Object({ digest: Type.String(), bytes: Type.Integer() })),
  }),
  prune: route({
    method: 'POST',
    path: '/v1/images/prune',
    summary: 'evict least recently used images nothing uses, down to maxBytes',
    body: ImagePruneRequest,
    reply: json(Type.Object({ evicted: Type.Array(Type.String()), bytesFreed: Type.Integer() })),
  }),
  remove: route({ method: 'DELETE', path: '/v1/images/:ref', summary: 'remove an image (one in use with ?force=true)', params: RefParams, query: RemoveQuery, reply: empty() }),
};

export const registries = {
  login: route({
    method: 'POST',
    path: '/v1/registries/login',
    summary: 'check and store credentials for a registry',
    body: LoginRequest,
    reply: json(Type.Object({ ok: Type.Boolean() })),
  }),
  logout: route({
    method: 'POST',
    path: '/v1/registries/logout',
    summary: "forget a registry's credentials",
    body: LogoutRequest,
    reply: json(Type.Object({ removed: Type.Boolean() })),
  }),
};
