import { Type, type Static } from '@sinclair/typebox';
import { created, json, ndjson, route } from './contract.js';
import { event, RefParams } from './common.js';

/**
 * Files of a running VM. Host paths are absolute: celld runs on the caller's host and reads or
 * writes them itself (as root when it runs as root).
 */

export const CopyInRequest = Type.Object(
  { hostPath: Type.String({ minLength: 1 }), guestPath: Type.String({ minLength: 1 }) },
  { additionalProperties: false },
);
export type CopyInRequest = Static<typeof CopyInRequest>;

export const CopyOutRequest = Type.Object(
  {
    guestPath: Type.String({ minLength: 1 }),
    hostPath: Type.String({ minLength: 1 }),
    /** Owner to give the copied files (the CLI sends its user's); default: celld's user. */
    uid: Type.Optional(Type.Integer({ minimum: 0 })),
    gid: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type CopyOutRequest = Static<typeof CopyOutRequest>;

export const CopyResult = Type.Object({
  /** Where the copy landed (in the VM for copy-in, on the host for copy-out). */
  target: Type.String(),
  files: Type.Integer(),
  directories: Type.Integer(),
  symlinks: Type.Integer(),
  bytes: Type.Integer(),
});
export type CopyResult = Static<typeof CopyResult>;

export const GuestPathQuery = Type.Object({ path: Type.String({ minLength: 1 }), follow: Type.Optional(Type.Boolean()) });
export const ReadFileQuery = Type.Object({ path: Type.String({ minLength: 1 }), maxBytes: Type.Optional(Type.Integer({ minimum: 0 })) });
export const WriteFileQuery = Type.Object({
  path: Type.String({ minLength: 1 }),
  mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })),
  uid: Type.Optional(Type.Integer({ minimum: 0 })),
  gid: Type.Optional(Type.Integer({ minimum: 0 })),
});

export const GuestFileStat = Type.Object({
  kind: Type.String(),
  mode: Type.Integer(),
  uid: Type.Integer(),
  gid: Type.Integer(),
  size: Type.Integer(),
  mtimeMs: Type.Number(),
  linkTarget: Type.String(),
});
export type GuestFileStat = Static<typeof GuestFileStat>;

export const FileReadEvent = Type.Union([
  /** A piece of the file, base64. */
  event('data', { data: Type.String({ contentEncoding: 'base64' }) }),
  event('end', { size: Type.Integer() }),
]);
export type FileReadEvent = Static<typeof FileReadEvent>;

export const files = {
  stat: route({
    method: 'GET',
    path: '/v1/vms/:ref/files/stat',
    summary: 'lstat of a guest path (stat with ?follow=true)',
    params: RefParams,
    query: GuestPathQuery,
    reply: json(GuestFileStat),
  }),
  read: route({
    method: 'GET',
    path: '/v1/vms/:ref/files/content',
    summary: "a guest file's bytes, streamed",
    params: RefParams,
    query: ReadFileQuery,
    reply: ndjson(FileReadEvent),
  }),
  write: route({
    method: 'POST',
    path: '/v1/vms/:ref/files/content',
    summary: 'create or atomically replace a guest file with the request body',
    params: RefParams,
    query: WriteFileQuery,
    body: 'octet-stream',
    reply: created(Type.Object({ path: Type.String(), bytes: Type.Integer() })),
  }),
  copyIn: route({
    method: 'POST',
    path: '/v1/vms/:ref/files/copy-in',
    summary: 'copy a host file or directory into the VM (cell cp HOST VM:PATH)',
    params: RefParams,
    body: CopyInRequest,
    reply: json(CopyResult),
  }),
  copyOut: route({
    method: 'POST',
    path: '/v1/vms/:ref/files/copy-out',
    summary: 'copy a guest file or directory onto the host (cell cp VM:PATH HOST)',
    params: RefParams,
    body: CopyOutRequest,
    reply: json(CopyResult),
  }),
};
