export { CellClient, DEFAULT_CONNECT_TIMEOUT_MS, type ConnectOptions } from './client.js';
export type { CommandResult, ExecHandlers, LogEntry, OutputHandlers, PullEvent, RunHandlers, SetupEvent } from './commands.js';
export { Sandbox, DEFAULT_SANDBOX_IMAGE, type OutputResult, type SandboxExecOptions, type SandboxOptions } from './sandbox.js';
export { CellError, ErrorCodes, isCellError, type ErrorCode } from '../domain/errors.js';
export type {
  ActionRequest,
  ActionResult,
  BuildRequest,
  BuildStreamEvent,
  BuildSummary,
  CacheEntry,
  ExecRequest,
  Image,
  Info,
  RunRequest,
  Snapshot,
  StreamEvent,
  TemplateBuildSummary,
  TemplateView,
  Vm,
} from '../api/schemas.js';
