import type { BuildProgressEvent } from '../api/builds.js';
import { Api } from '../api/routes.js';
import type { TemplateBuildRequest, TemplateBuildSummary, TemplatePushReply, TemplateVariantEvent, TemplateView } from '../api/templates.js';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { resultStream } from './commands.js';
import type { OutputHandlers, RequestOptions } from './options.js';
import type { Transport } from './transport.js';
import type { RemoveOptions } from './vms.js';

const { templates } = Api;

export interface TemplateBuildOptions extends RequestOptions, OutputHandlers {
  onEvent?(event: BuildProgressEvent | TemplateVariantEvent): void;
}

/** Templates: a build plus variants, each built into revisions (docs/templates.md). */
export class TemplatesClient {
  constructor(private readonly transport: Transport) {}

  /** Builds every variant of a template file (a path on celld's host); `snapshot` also stores warm-start snapshots. */
  build(req: TemplateBuildRequest, opts: TemplateBuildOptions = {}): Promise<TemplateBuildSummary> {
    return resultStream(
      this.transport.stream(templates.build, { body: req }, opts),
      opts,
      'template build',
      (event) => (event.type === 'templates' ? event.result : undefined),
      (event) => {
        if (event.type !== 'templates') opts.onEvent?.(event);
      },
    );
  }

  list(opts: RequestOptions = {}): Promise<TemplateView[]> {
    return this.transport.call(templates.list, {}, opts);
  }

  /** A variant by name, `TEMPLATE_ID:ROLE`, or a template id with one variant; with all its revisions. */
  get(ref: string, opts: RequestOptions = {}): Promise<TemplateView> {
    return this.transport.call(templates.get, { params: { ref } }, opts);
  }

  /**
   * Sends a variant's current revision to a registry (`host:5000/ns/name:tag`): its built disk's and
   * warm snapshot's blobs the registry lacks, then an OCI index over them. `onProgress` hears bytes.
   */
  async push(ref: string, reference: string, opts: RequestOptions & { insecureRegistries?: string[]; onProgress?: (done: number, total: number) => void } = {}): Promise<TemplatePushReply> {
    let result: TemplatePushReply | undefined;
    for await (const event of this.transport.stream(templates.push, { params: { ref }, body: { reference, insecureRegistries: opts.insecureRegistries } }, opts)) {
      if (event.type === 'progress') opts.onProgress?.(event.done, event.total);
      if (event.type === 'pushed') result = event.result;
    }
    if (!result) throw new CellError(ErrorCodes.INTERNAL, 'the push ended without its result');
    return result;
  }

  /** Fetches a template pushed with `push` and makes its revision the variant's current one here. */
  async pull(reference: string, opts: RequestOptions & { insecureRegistries?: string[]; onProgress?: (done: number, total: number) => void } = {}): Promise<TemplateView> {
    let template: TemplateView | undefined;
    for await (const event of this.transport.stream(templates.pull, { body: { reference, insecureRegistries: opts.insecureRegistries } }, opts)) {
      if (event.type === 'progress') opts.onProgress?.(event.done, event.total);
      if (event.type === 'template') template = event.template;
    }
    if (!template) throw new CellError(ErrorCodes.INTERNAL, 'the pull ended without a template');
    return template;
  }

  remove(ref: string, opts: RemoveOptions = {}): Promise<{ removed: string[] }> {
    return this.transport.call(templates.remove, { params: { ref }, query: { force: opts.force } }, opts);
  }
}
