import { Type, type Static } from '@sinclair/typebox';
import { created, empty, ErrorBody, json, ndjson, route, websocket } from './contract.js';
import { event, ExitEvent, OutputEvents, ProgressEvent, PullEvent, RefParams, RemoveQuery } from './common.js';

/** VMs: create, run (attached), start, stop, remove, exec with stdin, logs, stats. */

export const VmExit = Type.Object({
  exitCode: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.Integer(), Type.Null()]),
  reason: Type.String(),
  at: Type.String(),
});

/** Host-side rates a guest is held to (domain/vm.ts IoLimits). */
export const IoLimits = Type.Object(
  {
    diskIops: Type.Optional(Type.Integer({ minimum: 1 })),
    diskBytesPerSec: Type.Optional(Type.Integer({ minimum: 1 })),
    rngBytesPerSec: Type.Optional(Type.Integer({ minimum: 1 })),
  },
  { additionalProperties: false },
);

const EgressRules = Type.Object({ domains: Type.Array(Type.String()), cidrs: Type.Array(Type.String()) });
/** What a VM may reach outside (docs/networking.md, "Egress"). */
export const EgressPolicy = Type.Object({ allow: EgressRules, deny: EgressRules });

const Protocol = Type.Union([Type.Literal('tcp'), Type.Literal('udp')]);

/** A published port as recorded: HOST_IP:HOST_PORT -> GUEST_PORT/PROTOCOL (host port 0: any free one). */
export const PortSpec = Type.Object({ hostIp: Type.String(), hostPort: Type.Integer(), guestPort: Type.Integer(), protocol: Protocol });

/** A published port as asked for. */
export const PortRequest = Type.Object(
  {
    guestPort: Type.Integer({ minimum: 1, maximum: 65535 }),
    hostPort: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
    hostIp: Type.Optional(Type.String()),
    protocol: Type.Optional(Protocol),
  },
  { additionalProperties: false },
);

/** A health check as recorded (domain/health.ts): `cmd` is the argv, durations in ms. */
export const HealthCheck = Type.Object({
  cmd: Type.Array(Type.String()),
  intervalMs: Type.Integer(),
  timeoutMs: Type.Integer(),
  retries: Type.Integer(),
  startPeriodMs: Type.Integer(),
});

/** A health check as asked for: a string runs under /bin/sh -c; absent fields take Docker's defaults (30 s, 30 s, 3, 0). */
export const HealthCheckRequest = Type.Object(
  {
    cmd: Type.Union([Type.String({ minLength: 1 }), Type.Array(Type.String(), { minItems: 1 })]),
    intervalMs: Type.Optional(Type.Integer({ minimum: 100 })),
    timeoutMs: Type.Optional(Type.Integer({ minimum: 100 })),
    retries: Type.Optional(Type.Integer({ minimum: 1 })),
    startPeriodMs: Type.Optional(Type.Integer({ minimum: 0 })),
  },
  { additionalProperties: false },
);

const IdleAction = Type.Union([Type.Literal('stop'), Type.Literal('pause'), Type.Literal('pause-to-disk')]);

const HealthStatus = Type.Union([Type.Literal('starting'), Type.Literal('healthy'), Type.Literal('unhealthy')]);

/** Where a VM's health check stands, with its last five probes (output capped at 4 KiB each). */
export const HealthState = Type.Object({
  status: HealthStatus,
  failingStreak: Type.Integer(),
  log: Type.Array(Type.Object({ start: Type.String(), end: Type.String(), exitCode: Type.Integer(), output: Type.String() })),
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
  limits: Type.Optional(IoLimits),
  networks: Type.Optional(Type.Array(Type.String())),
  ports: Type.Optional(Type.Array(PortSpec)),
  egress: Type.Optional(EgressPolicy),
  labels: Type.Optional(Type.Record(Type.String(), Type.String())),
  health: Type.Optional(HealthCheck),
  /** Named volumes it mounts at each boot. */
  volumes: Type.Optional(Type.Array(Type.Object({ volume: Type.String(), path: Type.String(), readOnly: Type.Boolean() }))),
  /** Host folders it shares at each boot (by canonical host path), and the uid they are shared as. */
  hostFolders: Type.Optional(Type.Array(Type.Object({ source: Type.String(), path: Type.String(), readOnly: Type.Boolean(), owner: Type.Object({ uid: Type.Integer(), gid: Type.Integer() }) }))),
  /** `--ttl`, `--idle-timeout` in ms; `ttlSince`: when `update` last set the TTL. */
  timeouts: Type.Optional(
    Type.Object({
      ttlMs: Type.Optional(Type.Integer()),
      ttlSince: Type.Optional(Type.String()),
      idleTimeoutMs: Type.Optional(Type.Integer()),
      idleAction: Type.Optional(IdleAction),
    }),
  ),
  /** VMs started with `run --template`: which template, and whether they were forked warm or booted cold. */
  template: Type.Optional(
    Type.Object({ name: Type.String(), revision: Type.String(), start: Type.Union([Type.Literal('warm'), Type.Literal('cold')]), reason: Type.String() }),
  ),
});

export const VmState = Type.Union([
  Type.Literal('created'),
  Type.Literal('starting'),
  Type.Literal('running'),
  Type.Literal('paused'),
  Type.Literal('stopping'),
  Type.Literal('stopped'),
  /** Paused to disk (`pause --to-disk`): no QEMU, its memory in a snapshot until unpause. */
  Type.Literal('suspended'),
]);

export const Vm = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: VmState,
  spec: VmSpec,
  createdAt: Type.String(),
  startedAt: Type.Union([Type.String(), Type.Null()]),
  stoppedAt: Type.Union([Type.String(), Type.Null()]),
  pid: Type.Union([Type.Integer(), Type.Null()]),
  accelerator: Type.Union([Type.String(), Type.Null()]),
  exit: Type.Union([VmExit, Type.Null()]),
  baseSnapshot: Type.Union([Type.String(), Type.Null()]),
  /** Its address on its network and the ports it publishes now (null: no network, or never started). */
  network: Type.Optional(
    Type.Union([
      Type.Object({ networks: Type.Array(Type.Object({ name: Type.String(), address: Type.String() })), ports: Type.Array(PortSpec), egressDenied: Type.Integer(), droppedPackets: Type.Optional(Type.Integer()) }),
      Type.Null(),
    ]),
  ),
  /** Its health check's status and last probes (null or absent: no health check, or never started). */
  health: Type.Optional(Type.Union([HealthState, Type.Null()])),
  /** When its TTL ends (GET of a running or paused VM with one). */
  expiresAt: Type.Optional(Type.String()),
});
export type Vm = Static<typeof Vm>;

const TerminalDim = Type.Integer({ minimum: 1, maximum: 1000 });

export const RunRequest = Type.Object(
  {
    /** Required unless `fromSnapshot` or `template` is given. */
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
    /** Disk and entropy rates QEMU holds the guest to (images only: forks keep their snapshot's). */
    limits: Type.Optional(IoLimits),
    /** Networks by name, its way out first (default: `default` where celld has networking); `['none']`: no NIC. Forks are on their snapshot's. */
    networks: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 8 })),
    /** Egress rules as `--egress` takes them: `allow=pypi.org,*.pythonhosted.org,10.20.0.0/16`, `deny=...`. */
    egress: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 64 })),
    /** Labels as `--label` takes them: `team=ml` (a key alone: an empty value). Forks add theirs to their snapshot's. */
    labels: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 64 })),
    /** `-i`: the main command's stdin stays open: the stream's `exec` event names where to send it (detached: `cell attach`). */
    stdin: Type.Optional(Type.Boolean()),
    /** `-t`: the main command runs on a guest pseudo-terminal (`cols` x `rows`, default 80x24); resizes go to the `exec` event's id. */
    tty: Type.Optional(Type.Boolean()),
    cols: Type.Optional(TerminalDim),
    rows: Type.Optional(TerminalDim),
    /** `-v NAME:/guest/path[:ro]`: named volumes, made where missing (at most 8); `-v /host/path:/guest/path[:ro]`: host folders (absolute, at most 4). */
    volumes: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { maxItems: 8 })),
    /** A health check (`--health-cmd`): starting -> healthy | unhealthy, in inspect, ps and events. Forks keep their snapshot's unless given one. */
    health: Type.Optional(HealthCheckRequest),
    /** Stopped (removed with autoRemove) this long after it started: 1 s to 365 d. */
    ttlMs: Type.Optional(Type.Integer({ minimum: 0 })),
    /** No exec, file copy or published-port traffic for this long: `idleAction` (stop by default). */
    idleTimeoutMs: Type.Optional(Type.Integer({ minimum: 0 })),
    idleAction: Type.Optional(IdleAction),
    /** Published ports; a host port of 0 is any free one. Without a host address: 127.0.0.1. */
    ports: Type.Optional(Type.Array(PortRequest, { maxItems: 64 })),
    /** Start from a template (`NAME` or `NAME:ROLE`): warm from its snapshot when it has one, else cold. */
    template: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
export type RunRequest = Static<typeof RunRequest>;

/** Columns or rows of a terminal. */

export const ExecRequest = Type.Object(
  {
    cmd: Type.Array(Type.String(), { minItems: 1 }),
    env: Type.Optional(Type.Array(Type.String())),
    workingDir: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    timeoutSec: Type.Optional(Type.Number({ minimum: 0 })),
    /** When true the stream's first event is `exec` with an id to send stdin to. */
    stdin: Type.Optional(Type.Boolean()),
    /**
     * Run on a pseudo-terminal in the guest (`cell exec -t`): stdout and stderr are one stream
     * (stdout), stdin is what is typed (0x03 interrupts), the stream's first event is `exec` with an
     * id to send resizes (and stdin) to.
     */
    tty: Type.Optional(Type.Boolean()),
    /** The terminal's size with `tty` (default 80x24). */
    cols: Type.Optional(TerminalDim),
    rows: Type.Optional(TerminalDim),
  },
  { additionalProperties: false },
);
export type ExecRequest = Static<typeof ExecRequest>;

/** `cell update`: absent fields stay; 0 or null turns a limit off; a new TTL runs from now. */
export const UpdateRequest = Type.Object(
  {
    ttlMs: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
    idleTimeoutMs: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
    idleAction: Type.Optional(IdleAction),
  },
  { additionalProperties: false },
);
export type UpdateRequest = Static<typeof UpdateRequest>;

export const PauseRequest = Type.Object(
  {
    /** Save its memory to disk and end its QEMU (the host's RAM is freed); unpause restores it under the same id. */
    toDisk: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

/** A new size for the terminal of a running exec started with `tty`. */
export const ResizeRequest = Type.Object({ cols: TerminalDim, rows: TerminalDim }, { additionalProperties: false });
export type ResizeRequest = Static<typeof ResizeRequest>;

export const StopRequest = Type.Object({ timeoutSec: Type.Optional(Type.Number({ minimum: 0 })) }, { additionalProperties: false });
export type StopRequest = Static<typeof StopRequest>;

export const WaitRequest = Type.Object(
  {
    /** `stopped` (default): until its main command has exited (a detached VM runs on after it) or it stopped, as docker wait; `healthy`: until its health check passed. */
    until: Type.Optional(Type.Union([Type.Literal('stopped'), Type.Literal('healthy')])),
    /** Give up after this long: a `timeout` error. Absent: no limit. */
    timeoutMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 2_000_000_000 })),
  },
  { additionalProperties: false },
);
export type WaitRequest = Static<typeof WaitRequest>;

export const WaitEvent = Type.Union([
  /** Its health changed while waiting for `healthy`. */
  event('health', { vm: Vm }),
  /** The condition holds. */
  event('done', { vm: Vm }),
]);

export const ListQuery = Type.Object({ all: Type.Optional(Type.Boolean()) });
export const LogsQuery = Type.Object({
  follow: Type.Optional(Type.Boolean()),
  /** Only the last this many lines. */
  tail: Type.Optional(Type.Integer({ minimum: 0 })),
  /** Entries at or after this time (RFC 3339). */
  since: Type.Optional(Type.String({ format: 'date-time' })),
  /** Entries before this time (RFC 3339). */
  until: Type.Optional(Type.String({ format: 'date-time' })),
});

/**
 * Events of an attached run. `progress` and `pull` are reserved for set-up and pulls celld does on
 * demand before the boot (the SDK passes them on; today's engine does that work without reporting it).
 */
export const RunEvent = Type.Union([
  event('created', { vm: Vm }),
  event('running', { vm: Vm }),
  /** With `stdin` or `tty`, before the command starts: the id for POST /v1/execs/:execId/stdin and /resize. */
  event('exec', { execId: Type.String() }),
  ProgressEvent,
  PullEvent,
  ...OutputEvents,
  ExitEvent,
  /** The VM stopped (and is removed with `autoRemove`). */
  event('done', { vm: Vm }),
]);
export type RunEvent = Static<typeof RunEvent>;

export const ExecEvent = Type.Union([
  /** First, when stdin or a tty was asked for: where to send stdin and resizes. */
  event('exec', { execId: Type.String() }),
  ...OutputEvents,
  ExitEvent,
]);
export type ExecEvent = Static<typeof ExecEvent>;

export const AttachEvent = Type.Union([
  /** First, when the main command has stdin or a terminal: the id for POST /v1/execs/:execId/stdin and /resize. */
  event('exec', { execId: Type.String() }),
  ...OutputEvents,
  /** The main command ended while attached (the VM runs on). */
  ExitEvent,
]);

export const LogEvent = event('log', {
  time: Type.String(),
  stream: Type.Union([Type.Literal('stdout'), Type.Literal('stderr')]),
  text: Type.String(),
});
export type LogEvent = Static<typeof LogEvent>;

export const ConsoleEvent = Type.Union([
  /** First: where to send input (POST /v1/consoles/:session/input). */
  event('attached', { session: Type.String() }),
  /** What the guest wrote to its serial console; base64. */
  event('data', { data: Type.String({ contentEncoding: 'base64' }) }),
]);
export type ConsoleEvent = Static<typeof ConsoleEvent>;

export const StatsQuery = Type.Object({
  /** Keep sending a sample every second until the client goes away; without it, one sample. */
  stream: Type.Optional(Type.Boolean()),
});

const Bytes = Type.Integer({ minimum: 0 });

/** One VM's host-side resource use over the last second (`cell stats`; engine/vm-stats.ts). */
export const VmStats = Type.Object({
  id: Type.String(),
  name: Type.String(),
  state: VmState,
  /** When the sample was taken (RFC 3339). */
  time: Type.String(),
  /** Its QEMU's CPU use over the last second: 100 = one host core busy (two busy vCPUs approach 200). 0 when not running. */
  cpuPercent: Type.Number({ minimum: 0 }),
  cpus: Type.Integer(),
  /** QEMU's resident memory (RSS), its proportional share (PSS: pages shared with forks of one snapshot counted 1/N), and the RAM the guest was given. Null when not running. */
  memory: Type.Union([Type.Object({ rssBytes: Bytes, pssBytes: Bytes, guestBytes: Bytes }), Type.Null()]),
  /** Bytes the guest read and wrote on its disks since its machine started. Null when not running. */
  disk: Type.Union([Type.Object({ readBytes: Bytes, writeBytes: Bytes }), Type.Null()]),
  /** Bytes its NIC received and sent since its machine started, from the guest's side. Null when not running, without a NIC, or with user-mode networking (which counts nothing). */
  network: Type.Union([Type.Object({ rxBytes: Bytes, txBytes: Bytes }), Type.Null()]),
});
export type VmStats = Static<typeof VmStats>;

export const StatsEvent = event('stats', { stats: VmStats });

/** A browser's terminal (the dashboard's): a shell on a pseudo-terminal, over a WebSocket. */
export const TERMINAL_SUBPROTOCOL = 'cellvm.terminal.v1';
export const TerminalQuery = Type.Object({
  cols: Type.Optional(TerminalDim),
  rows: Type.Optional(TerminalDim),
  /** What runs on it, through `sh -c` (default: an interactive /bin/sh). */
  cmd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
  user: Type.Optional(Type.String({ minLength: 1 })),
});
export const TerminalClientMessage = Type.Object({ type: Type.Literal('resize'), cols: TerminalDim, rows: TerminalDim }, { additionalProperties: false });
export type TerminalClientMessage = Static<typeof TerminalClientMessage>;
export const TerminalServerMessage = Type.Union([
  /** The shell ended; the socket closes after it. */
  ExitEvent,
  /** It could not start or failed (no such VM, not running); the socket closes after it. */
  Type.Object({ type: Type.Literal('error'), error: ErrorBody.properties.error }),
]);
export type TerminalServerMessage = Static<typeof TerminalServerMessage>;
export type StatsEvent = Static<typeof StatsEvent>;

export const vms = {
  list: route({ method: 'GET', path: '/v1/vms', summary: 'VM records (running ones, all with ?all=true)', query: ListQuery, reply: json(Type.Array(Vm)) }),
  get: route({ method: 'GET', path: '/v1/vms/:ref', summary: 'one VM record', params: RefParams, reply: json(Vm) }),
  create: route({
    method: 'POST',
    path: '/v1/vms',
    summary: 'boot a VM that keeps running; its main command runs in the background (cell run -d)',
    body: RunRequest,
    reply: created(Vm),
  }),
  run: route({
    method: 'POST',
    path: '/v1/vms/run',
    summary: 'boot a VM, run its command with output streamed, stop it (cell run)',
    body: RunRequest,
    reply: ndjson(RunEvent),
  }),
  start: route({ method: 'POST', path: '/v1/vms/:ref/start', summary: 'boot a stopped VM again', params: RefParams, reply: json(Vm) }),
  update: route({
    method: 'POST',
    path: '/v1/vms/:ref/update',
    summary: 'change its time limits (ttlMs, idleTimeoutMs, idleAction), running or not',
    params: RefParams,
    body: UpdateRequest,
    reply: json(Vm),
  }),
  pause: route({
    method: 'POST',
    path: '/v1/vms/:ref/pause',
    summary: "stop a running VM's vCPUs (its QEMU and RAM stay), or with toDisk save its memory to disk and end its QEMU (state suspended); exec is refused with vm_paused until unpause",
    params: RefParams,
    body: PauseRequest,
    reply: json(Vm),
  }),
  unpause: route({ method: 'POST', path: '/v1/vms/:ref/unpause', summary: 'let a paused VM run on where it stopped; a suspended one is restored from its memory first', params: RefParams, reply: json(Vm) }),
  stop: route({
    method: 'POST',
    path: '/v1/vms/:ref/stop',
    summary: 'SIGTERM, SIGKILL after timeoutSec (default 10), power off',
    params: RefParams,
    body: StopRequest,
    reply: json(Vm),
  }),
  remove: route({ method: 'DELETE', path: '/v1/vms/:ref', summary: 'remove a VM (a running one with ?force=true)', params: RefParams, query: RemoveQuery, reply: empty() }),
  exec: route({
    method: 'POST',
    path: '/v1/vms/:ref/exec',
    summary: 'run a command in a running VM, output streamed',
    params: RefParams,
    body: ExecRequest,
    reply: ndjson(ExecEvent),
  }),
  execStdin: route({
    method: 'POST',
    path: '/v1/execs/:execId/stdin',
    summary: "bytes for a running exec's stdin; the end of the body closes it",
    params: Type.Object({ execId: Type.String({ minLength: 1 }) }),
    body: 'octet-stream',
    reply: empty(),
  }),
  execResize: route({
    method: 'POST',
    path: '/v1/execs/:execId/resize',
    summary: 'a new size for the terminal of a running exec started with tty (its foreground process gets SIGWINCH)',
    params: Type.Object({ execId: Type.String({ minLength: 1 }) }),
    body: ResizeRequest,
    reply: empty(),
  }),
  wait: route({
    method: 'POST',
    path: '/v1/vms/:ref/wait',
    summary: 'until the VM\'s main command has exited or the VM stopped (its `exit` says how) or, with until=healthy, its health check passed; timeoutMs bounds it',
    params: RefParams,
    body: WaitRequest,
    reply: ndjson(WaitEvent),
  }),
  attach: route({
    method: 'POST',
    path: '/v1/vms/:ref/attach',
    summary: "the running main command's output from now on (stdin and resizes through the `exec` event's id) until it ends (`exit`) or the client leaves (it runs on)",
    params: RefParams,
    reply: ndjson(AttachEvent),
  }),
  console: route({
    method: 'GET',
    path: '/v1/vms/:ref/console',
    summary: "the VM's serial console, one session at a time: its output until the client leaves or the VM stops; input through the session",
    params: RefParams,
    reply: ndjson(ConsoleEvent),
  }),
  consoleInput: route({
    method: 'POST',
    path: '/v1/consoles/:session/input',
    summary: "bytes for the serial console of an open console session (the end of the body ends nothing)",
    params: Type.Object({ session: Type.String({ minLength: 1 }) }),
    body: 'octet-stream',
    reply: empty(),
  }),
  logs: route({
    method: 'GET',
    path: '/v1/vms/:ref/logs',
    summary: "the main command's output (?tail=N lines, ?since= and ?until= times; with ?follow=true, new lines until the VM stops)",
    params: RefParams,
    query: LogsQuery,
    reply: ndjson(LogEvent),
  }),
  stats: route({
    method: 'GET',
    path: '/v1/vms/:ref/stats',
    summary: "host-side CPU %, memory (RSS, PSS), disk and network bytes of a VM's QEMU over one second; ?stream=true: a sample every second until the client leaves",
    params: RefParams,
    query: StatsQuery,
    reply: ndjson(StatsEvent),
  }),
  statsAll: route({
    method: 'GET',
    path: '/v1/stats',
    summary: 'a sample of every running VM over the same second (as /v1/vms/:ref/stats); ?stream=true: every second until the client leaves, VMs that start joining',
    query: StatsQuery,
    reply: ndjson(StatsEvent),
  }),
  terminal: route({
    method: 'GET',
    path: '/v1/vms/:ref/terminal',
    summary: "a shell on a pseudo-terminal in a running VM: binary frames are what is typed and what the terminal shows; text frames resize it (client) or say how it ended (celld); the shell ends when the socket closes",
    params: RefParams,
    query: TerminalQuery,
    reply: websocket(TERMINAL_SUBPROTOCOL, TerminalClientMessage, TerminalServerMessage),
  }),
};
