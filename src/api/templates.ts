import { Type, type Static } from '@sinclair/typebox';
import { json, ndjson, route } from './contract.js';
import { event, OutputEvents, RefParams, RemoveQuery } from './common.js';
import { BuildProgressEvent } from './builds.js';
import { PushReply, PushRequest, TransferEvent } from './snapshots.js';

/** Templates: a build plus variants, each built into revisions (docs/templates.md). */

/** A template file on celld's host (absolute path); `snapshot` also stores warm-start snapshots. */
export const TemplateBuildRequest = Type.Object(
  { file: Type.String({ minLength: 1 }), snapshot: Type.Optional(Type.Boolean()) },
  { additionalProperties: false },
);
export type TemplateBuildRequest = Static<typeof TemplateBuildRequest>;

export const TemplateVariantView = Type.Object({
  name: Type.String(),
  role: Type.String(),
  profile: Type.String(),
  vcpus: Type.Integer(),
  memMib: Type.Integer(),
  dataDiskMib: Type.Integer(),
});

export const TemplateRevisionView = Type.Object({
  id: Type.String(),
  templateName: Type.String(),
  revisionHash: Type.String(),
  cacheKey: Type.String(),
  inputsHash: Type.String(),
  schemaVersion: Type.Integer(),
  variant: TemplateVariantView,
  service: Type.Union([
    Type.Object({
      start: Type.Array(Type.String()),
      ready: Type.Optional(Type.Object({ cmd: Type.Array(Type.String()), timeoutSec: Type.Optional(Type.Integer()), intervalMs: Type.Optional(Type.Integer()) })),
    }),
    Type.Null(),
  ]),
  diskSnapshot: Type.String(),
  warmSnapshot: Type.Union([Type.String(), Type.Null()]),
  builtAt: Type.String(),
});
export type TemplateRevisionView = Static<typeof TemplateRevisionView>;

export const TemplateView = Type.Object({
  name: Type.String(),
  templateId: Type.String(),
  role: Type.String(),
  currentRevision: Type.Union([Type.String(), Type.Null()]),
  updatedAt: Type.String(),
  revision: Type.Union([TemplateRevisionView, Type.Null()]),
  /** With GET /v1/templates/:ref: every kept revision, newest first. */
  revisions: Type.Optional(Type.Array(TemplateRevisionView)),
});
export type TemplateView = Static<typeof TemplateView>;

export const TemplateVariantEvent = event('variant', {
  name: Type.String(),
  role: Type.String(),
  /** unchanged: a revision with the same inputs exists; built: a new revision. */
  status: Type.Union([Type.Literal('building'), Type.Literal('unchanged'), Type.Literal('built')]),
  revision: Type.Optional(Type.String()),
  warm: Type.Optional(Type.Boolean()),
});
export type TemplateVariantEvent = Static<typeof TemplateVariantEvent>;

export const TemplateBuildSummary = Type.Object({
  exitCode: Type.Integer(),
  variants: Type.Array(
    Type.Object({ name: Type.String(), role: Type.String(), revision: Type.String(), unchanged: Type.Boolean(), warm: Type.Boolean() }),
  ),
});
export type TemplateBuildSummary = Static<typeof TemplateBuildSummary>;

export const TemplateBuildEvent = Type.Union([
  ...BuildProgressEvent.anyOf,
  TemplateVariantEvent,
  ...OutputEvents,
  event('templates', { result: TemplateBuildSummary }),
]);
export type TemplateBuildEvent = Static<typeof TemplateBuildEvent>;

/** A variant's current revision pushed: the blobs of both its snapshots, and each snapshot's manifest. */
export const TemplatePushReply = Type.Composite([PushReply, Type.Object({ parts: Type.Object({ disk: Type.String(), warm: Type.Union([Type.String(), Type.Null()]) }) })]);
export type TemplatePushReply = Static<typeof TemplatePushReply>;
export const TemplatePushStreamEvent = Type.Union([TransferEvent, event('pushed', { result: TemplatePushReply }), event('done', {})]);
export type TemplatePushStreamEvent = Static<typeof TemplatePushStreamEvent>;

export const TemplatePullRequest = Type.Object(
  { reference: Type.String({ minLength: 1, maxLength: 1024 }), insecureRegistries: Type.Optional(Type.Array(Type.String({ maxLength: 256 }), { maxItems: 16 })) },
  { additionalProperties: false },
);
export type TemplatePullRequest = Static<typeof TemplatePullRequest>;
export const TemplatePullStreamEvent = Type.Union([TransferEvent, event('template', { template: TemplateView }), event('done', {})]);
export type TemplatePullStreamEvent = Static<typeof TemplatePullStreamEvent>;

export const templates = {
  build: route({
    method: 'POST',
    path: '/v1/templates/build',
    summary: "build every variant of a template file: the build's events, then one per variant",
    body: TemplateBuildRequest,
    reply: ndjson(TemplateBuildEvent),
  }),
  list: route({ method: 'GET', path: '/v1/templates', summary: 'template variants with their current revision', reply: json(Type.Array(TemplateView)) }),
  get: route({
    method: 'GET',
    path: '/v1/templates/:ref',
    summary: 'one variant (NAME, TEMPLATE_ID:ROLE, or a template id with one variant) with every kept revision',
    params: RefParams,
    reply: json(TemplateView),
  }),
  push: route({
    method: 'POST',
    path: '/v1/templates/:ref/push',
    summary: "send a variant's current revision to a registry: its snapshots (only the blobs it lacks), then an index over them",
    params: RefParams,
    body: PushRequest,
    reply: ndjson(TemplatePushStreamEvent),
  }),
  pull: route({
    method: 'POST',
    path: '/v1/templates/pull',
    summary: 'fetch a template pushed to a registry and make its revision the current one, progress streamed',
    body: TemplatePullRequest,
    reply: ndjson(TemplatePullStreamEvent),
  }),
  remove: route({
    method: 'DELETE',
    path: '/v1/templates/:ref',
    summary: 'remove a variant or a whole template (names removed)',
    params: RefParams,
    query: RemoveQuery,
    reply: json(Type.Object({ removed: Type.Array(Type.String()) })),
  }),
};
