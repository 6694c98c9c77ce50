export { CellClient, type ConnectOptions, type CommandResult, type ExecHandlers, type RunHandlers, type SetupEvent, type PullEvent } from './client.js';
export { Sandbox, type SandboxOptions, type SandboxExecOptions } from './sandbox.js';
export { CellError, ErrorCodes, type ErrorCode } from '../domain/errors.js';
export type { Vm, Image, Info, Snapshot, RunRequest, ExecRequest, StreamEvent } from '../api/schemas.js';
