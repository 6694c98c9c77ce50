// The SDK's public surface: clients, their option types, error tests, and the wire's record types.
export { CellClient, DEFAULT_CONNECT_TIMEOUT_MS, type ConnectOptions, type SetupOptions } from './client.js';
export type { RequestOptions, OutputHandlers } from './options.js';
export type { CommandResult, LogEntry, PullEvent, RunEventHandlers, SetupEvent, StdinSource } from './commands.js';
export {
  VmsClient,
  type ExecOptions,
  type ExecSpec,
  type LogsOptions,
  type ConsoleOptions,
  type ConsoleHandle,
  type RemoveOptions,
  type VmListOptions,
  type VmRunOptions,
  type VmSpec,
  type VmStopOptions,
} from './vms.js';
export { FilesClient, type CopyOutOptions, type FileData, type FileReadOptions, type FileStatOptions, type FileWriteOptions } from './files.js';
export {
  SnapshotsClient,
  type SnapshotForkOptions,
  type SnapshotImportOptions,
  type SnapshotPruneOptions,
  type SnapshotTakeOptions,
} from './snapshots.js';
export {
  ImagesClient,
  RegistriesClient,
  type ImageImportOptions,
  type ImagePruneOptions,
  type ImagePullOptions,
  type ImagePushOptions,
  type InsecureRegistriesOption,
  type LoginOptions,
} from './images.js';
export {
  ActionsClient,
  BuildsClient,
  CacheClient,
  type ActionRunOptions,
  type ActionSpec,
  type BuildRunOptions,
  type CachePruneOptions,
  type RemovedCacheEntry,
} from './builds.js';
export { TemplatesClient, type TemplateBuildOptions } from './templates.js';
export { NetworksClient } from './networks.js';
export { VolumesClient, type CreateVolumeOptions } from './volumes.js';
export type { VolumeView } from '../api/volumes.js';
export { TokensClient, type CreateTokenOptions } from './tokens.js';
export type { TokenView } from '../api/tokens.js';
export { EventsClient, type CellEvent, type EventsOptions } from './events.js';
export {
  Sandbox,
  DEFAULT_SANDBOX_IMAGE,
  type SandboxConnectOptions,
  type SandboxForkOptions,
  type SandboxOptions,
  type SandboxSnapshotOptions,
} from './sandbox.js';
export { SandboxCommands, type Command, type CommandOptions, type CommandOutput, type CommandRunOptions, type CommandStartOptions } from './sandbox-commands.js';
export { CommandHandle, type OutputChunk } from './command-handle.js';
export { SandboxPty, PtyHandle, type PtyCreateOptions, type PtySize } from './sandbox-pty.js';
export { SandboxFiles, type FileEntry, type MkdirOptions } from './sandbox-files.js';
export * from './errors.js';
export { CellError, ErrorCodes, isCellError, type ErrorCode } from '../domain/errors.js';
export type { Vm, VmStats, RunRequest, UpdateRequest, ExecRequest, RunEvent, ExecEvent } from '../api/vms.js';
export type { Snapshot } from '../api/snapshots.js';
export type { NetworkView, CreateNetworkRequest } from '../api/networks.js';
export type { Image, ImageRef } from '../api/images.js';
export type { DiskUsage, Info } from '../api/system.js';
export type { CopyResult, GuestFileStat } from '../api/files.js';
export type { ActionRequest, ActionResult, BuildEvent, BuildProgressEvent, BuildRequest, BuildSummary, CacheEntry } from '../api/builds.js';
export type { TemplateBuildRequest, TemplateBuildSummary, TemplateVariantEvent, TemplateView } from '../api/templates.js';
