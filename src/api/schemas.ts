import { Type, type Static } from '@sinclair/typebox';

/**
 * The wire contract of celld's HTTP API, shared by the server (validation, OpenAPI) and the SDK
 * (types). Version prefix: /v1. Errors: HTTP status plus `{ error: { code, message, details? } }`.
 * Streaming endpoints answer `application/x-ndjson`: one StreamEvent per line.
 */

export const ErrorBody = Type.Object({
  error: Type.Object({
    code: Type.String(),
    message: Type.String(),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  }),
});
export type ErrorBody = Static<typeof ErrorBody>;

export const VmExit = Type.Object({
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.Integer(), Type.Null()]),
  reason: Type.String(),
  at: Type.String(),
});

export const VmSpec = Type.Object({
  image: Type.String(),
  imageDigest: Type.String(),
  cpus: Type.Integer(),
  memoryMib: Type.Integer(),
  cmd: Type.Array(Type.String()),
  env: Type.Array(Type.String()),
  workingDir: Type.String(),
  user: Type.String(),
  timeoutSec: Type.Number(),
  autoRemove: Type.Boolean(),
  dataDiskMib: Type.Optional(Type.Integer()),
  /** VMs started with `run --template`: which template, and whether they were forked warm or booted cold. */
  template: Type.Optional(
    Type.Object({ name: Type.String(), revision: Type.String(), start: Type.Union([Type.Literal('warm'), Type.Literal('cold')]), reason: Type.String() }),
  ),
});

export const Vm = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: Type.Union([
    Type.Literal('created'),
    Type.Literal('starting'),
    Type.Literal('running'),
    Type.Literal('stopping'),
    Type.Literal('stopped'),
  ]),
  spec: VmSpec,
  createdAt: Type.String(),
  startedAt: Type.Union([Type.String(), Type.Null()]),
  stoppedAt: Type.Union([Type.String(), Type.Null()]),
  pid: Type.Union([Type.Integer(), Type.Null()]),
  accelerator: Type.Union([Type.String(), Type.Null()]),
  exit: Type.Union([VmExit, Type.Null()]),
  baseSnapshot: Type.Union([Type.String(), Type.Null()]),
});
export type Vm = Static<typeof Vm>;

export const RunRequest = Type.Object(
  {
    /** Required unless `fromSnapshot` is given. */
    image: Type.Optional(Type.String({ minLength: 1 })),
    name: Type.Optional(Type.String()),
    cpus: Type.Optional(Type.Integer()),
    memoryMib: Type.Optional(Type.Integer()),
    cmd: Type.Optional(Type.Array(Type.String())),
    env: Type.Optional(Type.Array(Type.String())),
    workingDir: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    timeoutSec: Type.Optional(Type.Number({ minimum: 0 })),
    autoRemove: Type.Optional(Type.Boolean()),
    /** Fork this snapshot instead of booting `image` (which is then ignored). */
    fromSnapshot: Type.Optional(Type.String({ minLength: 1 })),
    /** An empty ext4 disk of this many MiB mounted at /data (kept by snapshots and forks). */
    dataDiskMib: Type.Optional(Type.Integer()),
    /** Start from a template (`NAME` or `NAME:ROLE`): warm from its snapshot when it has one, else cold. */
    template: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type RunRequest = Static<typeof RunRequest>;

export const ExecRequest = Type.Object(
  {
    cmd: Type.Array(Type.String(), { minItems: 1 }),
    env: Type.Optional(Type.Array(Type.String())),
    workingDir: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    timeoutSec: Type.Optional(Type.Number({ minimum: 0 })),
    /** When true the stream's first event is `exec` with an id to send stdin to. */
    stdin: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type ExecRequest = Static<typeof ExecRequest>;

export const StopRequest = Type.Object({ timeoutSec: Type.Optional(Type.Number({ minimum: 0 })) }, { additionalProperties: false });
export type StopRequest = Static<typeof StopRequest>;

export const RefParams = Type.Object({ ref: Type.String({ minLength: 1 }) });

export const ListQuery = Type.Object({ all: Type.Optional(Type.Boolean()) });
export const RemoveQuery = Type.Object({ force: Type.Optional(Type.Boolean()) });
export const LogsQuery = Type.Object({ follow: Type.Optional(Type.Boolean()) });

export const Image = Type.Object({
  reference: Type.String(),
  digest: Type.String(),
  sizeBytes: Type.Integer(),
  builtin: Type.Boolean(),
  createdAt: Type.String(),
  lastUsed: Type.Union([Type.String(), Type.Null()]),
});
export type Image = Static<typeof Image>;

export const Info = Type.Object({
  version: Type.String(),
  home: Type.String(),
  cacheDir: Type.String(),
  accelerator: Type.String(),
  acceleratorReason: Type.String(),
  qemuVersion: Type.String(),
  guestKernel: Type.String(),
  vms: Type.Record(Type.String(), Type.Integer()),
  images: Type.Integer(),
  spares: Type.Integer(),
  imageCacheMaxBytes: Type.Union([Type.Integer(), Type.Null()]),
  daemonPid: Type.Integer(),
});
export type Info = Static<typeof Info>;

/** One line of an ndjson stream. `data` of stdout/stderr is base64 (output may be binary). */
export type StreamEvent =
  | { type: 'progress'; step: string; status: 'start' | 'done' | 'cached'; detail?: string }
  | { type: 'created'; vm: Vm }
  | { type: 'running'; vm: Vm }
  | { type: 'exec'; execId: string }
  | { type: 'stdout'; data: string }
  | { type: 'stderr'; data: string }
  | { type: 'exit'; exitCode: number; signal: number | null; timedOut: boolean; durationMs: number }
  | { type: 'log'; time: string; stream: 'stdout' | 'stderr'; text: string }
  | { type: 'pull'; event: Record<string, unknown> & { phase: string } }
  | { type: 'image'; image: { reference: string; digest: string; sizeBytes: number } }
  | { type: 'done'; vm?: Vm }
  | { type: 'data'; data: string }
  | { type: 'end'; size: number }
  | { type: 'action'; key: string | null; cached: boolean }
  | { type: 'result'; result: ActionResult }
  | BuildStreamEvent
  | TemplateVariantEvent
  | { type: 'templates'; result: TemplateBuildSummary }
  | { type: 'error'; error: ErrorBody['error'] };

export const API_PREFIX = '/v1';

export const SnapshotRequest = Type.Object(
  { name: Type.Optional(Type.String()), stop: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export type SnapshotRequest = Static<typeof SnapshotRequest>;

export const ForkRequest = Type.Object(
  { count: Type.Optional(Type.Integer({ minimum: 1 })), name: Type.Optional(Type.String()) },
  { additionalProperties: false },
);
export type ForkRequest = Static<typeof ForkRequest>;

export const RestoreRequest = Type.Object({ snapshot: Type.String({ minLength: 1 }) }, { additionalProperties: false });
export type RestoreRequest = Static<typeof RestoreRequest>;

export const CompatKey = Type.Object({
  qemuVersion: Type.String(),
  machine: Type.String(),
  cpuModel: Type.String(),
  accelerator: Type.String(),
  kernelDigest: Type.String(),
  initramfsDigest: Type.String(),
});

export const Snapshot = Type.Object({
  id: Type.String(),
  name: Type.String(),
  parentVm: Type.Union([Type.String(), Type.Null()]),
  parentVmName: Type.Union([Type.String(), Type.Null()]),
  parentSnapshot: Type.Union([Type.String(), Type.Null()]),
  spec: VmSpec,
  compat: CompatKey,
  stateBytes: Type.Integer(),
  memoryBytes: Type.Integer(),
  diskBytes: Type.Integer(),
  createdAt: Type.String(),
});
export type Snapshot = Static<typeof Snapshot>;

export const ExportRequest = Type.Object({ file: Type.String({ minLength: 1 }) }, { additionalProperties: false });
export type ExportRequest = Static<typeof ExportRequest>;

export const ImportRequest = Type.Object(
  { file: Type.String({ minLength: 1 }), name: Type.Optional(Type.String()) },
  { additionalProperties: false },
);
export type ImportRequest = Static<typeof ImportRequest>;

export const PruneRequest = Type.Object(
  { maxCount: Type.Optional(Type.Integer({ minimum: 0 })), maxBytes: Type.Optional(Type.Integer({ minimum: 0 })) },
  { additionalProperties: false },
);
export type PruneRequest = Static<typeof PruneRequest>;

/** POST /v1/actions: one command in a fresh VM, optionally cached (domain/action.ts). */
export const ActionRequest = Type.Object(
  {
    /** Exactly one of image and fromSnapshot. */
    image: Type.Optional(Type.String({ minLength: 1 })),
    fromSnapshot: Type.Optional(Type.String({ minLength: 1 })),
    cmd: Type.Array(Type.String()),
    env: Type.Optional(Type.Array(Type.String())),
    workingDir: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    timeoutSec: Type.Optional(Type.Number({ minimum: 0 })),
    cpus: Type.Optional(Type.Integer()),
    memoryMib: Type.Optional(Type.Integer()),
    /** A host path (absolute; celld runs on the same host) copied into the guest first. */
    inject: Type.Optional(
      Type.Object({ hostPath: Type.String({ minLength: 1 }), guestPath: Type.Optional(Type.String()) }, { additionalProperties: false }),
    ),
    detach: Type.Optional(Type.Boolean()),
    ready: Type.Optional(
      Type.Object(
        { cmd: Type.Array(Type.String(), { minItems: 1 }), timeoutSec: Type.Optional(Type.Integer({ minimum: 1 })), intervalMs: Type.Optional(Type.Integer({ minimum: 10 })) },
        { additionalProperties: false },
      ),
    ),
    /** Look up and store the result under the action's key (`salt` is mixed into the key). */
    cache: Type.Optional(Type.Boolean()),
    salt: Type.Optional(Type.String()),
    /** Take a snapshot after a successful command even without caching. */
    keepSnapshot: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type ActionRequest = Static<typeof ActionRequest>;

export const ActionResult = Type.Object({
  exitCode: Type.Integer(),
  snapshot: Type.Union([Snapshot, Type.Null()]),
  cached: Type.Boolean(),
  key: Type.Union([Type.String(), Type.Null()]),
  durationMs: Type.Number(),
});
export type ActionResult = Static<typeof ActionResult>;

/** POST /v1/builds: a build file on celld's host (absolute path). */
export const BuildRequest = Type.Object(
  {
    file: Type.String({ minLength: 1 }),
    tag: Type.Optional(Type.String({ minLength: 1 })),
    noCache: Type.Optional(Type.Boolean()),
    target: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type BuildRequest = Static<typeof BuildRequest>;

export interface BuildSummary {
  snapshot: Snapshot | null;
  exitCode: number;
  ran: number;
  cached: number;
  durationMs: number;
  key: string | null;
}

export type BuildStepKind = 'run' | 'copy' | 'env' | 'workdir';

/** Events of a build stream, besides stdout/stderr of the steps' commands. */
export type BuildStreamEvent =
  | { type: 'base'; description: string }
  | { type: 'step'; index: number; number: number; total: number; kind: BuildStepKind; description: string; line?: number }
  | { type: 'step-done'; index: number; number: number; total: number; outcome: 'ran' | 'cached' | 'metadata'; snapshot: string | null; durationMs: number }
  | { type: 'step-failed'; index: number; number: number; exitCode: number; message: string }
  | { type: 'built'; result: BuildSummary };

export const CacheEntry = Type.Object({
  key: Type.String(),
  snapshotId: Type.String(),
  snapshotName: Type.Union([Type.String(), Type.Null()]),
  bytes: Type.Integer(),
  description: Type.String(),
  createdAt: Type.String(),
  lastUsed: Type.String(),
  hits: Type.Integer(),
});
export type CacheEntry = Static<typeof CacheEntry>;

export const CachePruneRequest = Type.Object(
  {
    maxCount: Type.Optional(Type.Integer({ minimum: 0 })),
    maxBytes: Type.Optional(Type.Integer({ minimum: 0 })),
    /** Entries last used longer ago than this go. */
    maxAgeSec: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);
export type CachePruneRequest = Static<typeof CachePruneRequest>;

/** POST /v1/templates/build: a template file on celld's host (absolute path). */
export const TemplateBuildRequest = Type.Object(
  { file: Type.String({ minLength: 1 }), snapshot: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export type TemplateBuildRequest = Static<typeof TemplateBuildRequest>;

export interface TemplateVariantView {
  name: string;
  role: string;
  profile: string;
  vcpus: number;
  memMib: number;
  dataDiskMib: number;
}

export interface TemplateRevisionView {
  id: string;
  revisionHash: string;
  cacheKey: string;
  inputsHash: string;
  schemaVersion: number;
  variant: TemplateVariantView;
  service: { start: string[]; ready?: { cmd: string[]; timeoutSec?: number } } | null;
  diskSnapshot: string;
  warmSnapshot: string | null;
  builtAt: string;
}

export interface TemplateView {
  name: string;
  templateId: string;
  role: string;
  currentRevision: string | null;
  updatedAt: string;
  revision: TemplateRevisionView | null;
  /** With GET /v1/templates/:ref: every kept revision, newest first. */
  revisions?: TemplateRevisionView[];
}

export type TemplateVariantEvent = {
  type: 'variant';
  name: string;
  role: string;
  status: 'building' | 'unchanged' | 'built';
  revision?: string;
  warm?: boolean;
};

export interface TemplateBuildSummary {
  exitCode: number;
  variants: { name: string; role: string; revision: string; unchanged: boolean; warm: boolean }[];
}

/**
 * Files of a running VM (server/routes/files.ts). Host paths are absolute: celld runs on the
 * caller's host and reads or writes them itself (as root when it runs as root).
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
