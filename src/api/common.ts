import { Type, type Static, type TProperties, type TSchema } from '@sinclair/typebox';

/** Schemas several resources share: references, removal flags, stream events of commands. */

/** A VM, snapshot, image or template: full id, name, or unique id prefix of 3+ characters. */
export const RefParams = Type.Object({ ref: Type.String({ minLength: 1 }) });
export const RemoveQuery = Type.Object({ force: Type.Optional(Type.Boolean()) });

/** One kind of stream event: `{ type: NAME, ...fields }`. */
export function event<const N extends string, P extends TProperties>(type: N, fields: P) {
  return Type.Object({ type: Type.Literal(type), ...fields });
}

/** A command's output; `data` is base64 (output may be binary). */
export const StdoutEvent = event('stdout', { data: Type.String({ contentEncoding: 'base64' }) });
export const StderrEvent = event('stderr', { data: Type.String({ contentEncoding: 'base64' }) });
/** Spread `...OutputEvents` into a stream's union: nested unions would read badly in OpenAPI. */
export const OutputEvents = [StdoutEvent, StderrEvent] as const;
export const OutputEvent = Type.Union([...OutputEvents]);
export type OutputEvent = Static<typeof OutputEvent>;

/** How a command ended. `exitCode` follows the shell: 124 after a timeout, 128+N for signal N. */
export const ExitEvent = event('exit', {
  exitCode: Type.Integer(),
  signal: Type.Union([Type.Integer(), Type.Null()]),
  timedOut: Type.Boolean(),
  durationMs: Type.Number(),
  /** Present (true) when the guest kernel's OOM killer ended the process (it then exits 137). */
  oomKilled: Type.Optional(Type.Boolean()),
});
export type ExitEvent = Static<typeof ExitEvent>;

/** A step of host set-up (kernel, initramfs, ...). */
export const ProgressEvent = event('progress', {
  step: Type.String(),
  status: Type.Union([Type.Literal('start'), Type.Literal('done'), Type.Literal('cached')]),
  detail: Type.Optional(Type.String()),
});
export type ProgressEvent = Static<typeof ProgressEvent>;

/** Registry pull progress; `phase` says what the other fields mean. */
export const PullProgress = Type.Object({ phase: Type.String() }, { additionalProperties: true });
export type PullProgress = Static<typeof PullProgress> & Record<string, unknown>;
export const PullEvent = event('pull', { event: Type.Unsafe<PullProgress>(PullProgress) });

/** `{ removed: [...] }`, the answer of prunes. */
export const Removed = <T extends TSchema>(item: T) => Type.Object({ removed: Type.Array(item) });
