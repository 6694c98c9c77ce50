import type { BuildProgressEvent } from '../api/builds.js';
import { Api } from '../api/routes.js';
import type { TemplateBuildRequest, TemplateBuildSummary, TemplateVariantEvent, TemplateView } from '../api/templates.js';
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

  remove(ref: string, opts: RemoveOptions = {}): Promise<{ removed: string[] }> {
    return this.transport.call(templates.remove, { params: { ref }, query: { force: opts.force } }, opts);
  }
}
