import { randomBytes } from 'node:crypto';
import { basename, dirname } from 'node:path';
import { CellError, ErrorCodes } from '../domain/errors.js';
import { shortId } from '../domain/ids.js';
import type { SnapshotRecord } from '../domain/snapshot.js';
import { parseTemplateFile, revisionHashOf, revisionKeys, TEMPLATE_SCHEMA_VERSION, type TemplateFile, type TemplateService, type TemplateVariant } from '../domain/template-file.js';
import { mergeEnv, type TemplateStart, type VmRecord, type VmSpec } from '../domain/vm.js';
import type { TemplateRecord, TemplateRevision } from '../store/template-store.js';
import { readDefinition, type BuildEvent } from './builds.js';
import { CELLD_HOST_FS, type HostFs } from './host-fs.js';
import type { Builds } from './builds.js';
import type { EngineContext } from './context.js';
import type { Images } from './images.js';
import type { Snapshots } from './snapshots.js';
import { pullTemplate, pushTemplate, type TemplatePushResult } from './template-registry.js';
import { formatReference, parseReference } from '../image/reference.js';
import type { TransferProgress } from './snapshot-registry.js';
import type { Vms } from './vms.js';
import { parseUser, runGuestCommand } from './exec-runner.js';
import type { OutputSink } from './output.js';
import { awaitReady } from './ready-check.js';

export type TemplateEvent =
  | BuildEvent
  | {
      type: 'variant';
      name: string;
      role: string;
      /** unchanged: a revision with the same inputs exists; built: a new revision. */
      status: 'building' | 'unchanged' | 'built';
      revision?: string;
      warm?: boolean;
    };

export interface TemplateBuildOptions {
  /** Boot each variant, await its service, and store a snapshot for warm starts. */
  snapshot?: boolean;
  sink?: OutputSink;
  signal?: AbortSignal;
  onEvent?(event: TemplateEvent): void;
  /** Whose file access reads the files its build copies (engine/host-fs.ts). */
  host?: HostFs;
}

export interface TemplateBuildResult {
  exitCode: number;
  variants: { name: string; role: string; revision: string; unchanged: boolean; warm: boolean }[];
}

export interface TemplateView {
  template: TemplateRecord;
  revision: TemplateRevision | undefined;
}

/** Old revisions kept per variant (besides the current one) before they and their warm snapshots go. */
const KEEP_REVISIONS = 2;

/**
 * Templates, as in the mvm seed: a build plus variants (roles with their own resources). Each
 * variant becomes a revision; `--snapshot` adds a snapshot of a booted VM whose service passed its
 * ready check. `run --template` forks that snapshot when there is one and the backend can restore
 * snapshots, and otherwise cold-boots the built disk and starts the service, saying which it did.
 */
export class Templates {
  constructor(
    private readonly ctx: EngineContext,
    private readonly vms: Vms,
    private readonly snapshots: Snapshots,
    private readonly builds: Builds,
    private readonly images: Pick<Images, 'registryAccess'>,
  ) {}

  async load(file: string, host: HostFs = CELLD_HOST_FS): Promise<TemplateFile> {
    return parseTemplateFile(basename(file), await readDefinition(file, 'template file', host), dirname(file));
  }

  async build(tf: TemplateFile, opts: TemplateBuildOptions = {}): Promise<TemplateBuildResult> {
    const emit = opts.onEvent ?? (() => {});
    const built = await this.builds.build(tf.build, { sink: opts.sink, signal: opts.signal, onEvent: emit, host: opts.host });
    if (built.exitCode !== 0 || !built.snapshot || !built.key) return { exitCode: built.exitCode || 1, variants: [] };
    const disk = built.snapshot;
    const wantWarm = (opts.snapshot ?? false) && this.ctx.backend.capabilities.snapshots;
    const variants: TemplateBuildResult['variants'] = [];
    for (const variant of tf.variants) {
      const { inputsHash, cacheKey } = revisionKeys(built.key, tf.service, variant);
      const existing = this.ctx.stores.templates
        .revisions(variant.name)
        .find((r) => r.cacheKey === cacheKey && this.intact(r) && (!wantWarm || r.warmSnapshot !== null));
      const record = { name: variant.name, templateId: tf.templateId, role: variant.role };
      if (existing) {
        this.ctx.stores.templates.setCurrent(record, existing.id, new Date().toISOString());
        await this.applyPool(variant, existing.warmSnapshot);
        emit({ type: 'variant', name: variant.name, role: variant.role, status: 'unchanged', revision: existing.id, warm: existing.warmSnapshot !== null });
        variants.push({ name: variant.name, role: variant.role, revision: existing.id, unchanged: true, warm: existing.warmSnapshot !== null });
        continue;
      }
      emit({ type: 'variant', name: variant.name, role: variant.role, status: 'building' });
      const warm = wantWarm ? await this.warmSnapshot(variant, disk, tf.service, cacheKey, opts.signal) : null;
      const revisionHash = revisionHashOf(cacheKey, disk.id, warm?.id ?? null);
      const revision: TemplateRevision = {
        id: revisionHash.slice(0, 32),
        templateName: variant.name,
        revisionHash,
        cacheKey,
        inputsHash,
        schemaVersion: TEMPLATE_SCHEMA_VERSION,
        variant,
        service: tf.service,
        diskSnapshot: disk.id,
        warmSnapshot: warm?.id ?? null,
        builtAt: new Date().toISOString(),
      };
      this.ctx.db.transaction(() => {
        this.ctx.stores.templates.insertRevision(revision);
        this.ctx.stores.templates.setCurrent(record, revision.id, revision.builtAt);
      })();
      await this.pruneRevisions(variant.name);
      await this.applyPool(variant, revision.warmSnapshot);
      emit({ type: 'variant', name: variant.name, role: variant.role, status: 'built', revision: revision.id, warm: warm !== null });
      variants.push({ name: variant.name, role: variant.role, revision: revision.id, unchanged: false, warm: warm !== null });
    }
    return { exitCode: 0, variants };
  }

  /**
   * The variant's `pool` goes to its current warm snapshot; older revisions' snapshots keep none
   * (run --template forks only the current one).
   */
  private async applyPool(variant: TemplateVariant, current: string | null): Promise<void> {
    for (const r of this.ctx.stores.templates.revisions(variant.name)) {
      if (r.warmSnapshot && r.warmSnapshot !== current && this.ctx.stores.pools.get(r.warmSnapshot)) {
        await this.snapshots.setPool(r.warmSnapshot, { size: 0, warm: false });
      }
    }
    if (!current || !this.snapshots.get(current)) return;
    const setting = variant.pool ?? { size: 0, warm: false };
    const now = this.ctx.stores.pools.get(current);
    if (setting.size === 0 && !now) return;
    if (now && now.size === setting.size && now.warm === setting.warm) return;
    await this.snapshots.setPool(current, setting);
  }

  /** A variant's revisions, newest first. */
  revisions(name: string): TemplateRevision[] {
    return this.ctx.stores.templates.revisions(name);
  }

  list(): TemplateView[] {
    return this.ctx.stores.templates.list().map((template) => ({
      template,
      revision: template.currentRevision ? this.ctx.stores.templates.revision(template.currentRevision) : undefined,
    }));
  }

  /**
   * `NAME` (a variant's name, or a template id with one variant) or `NAME:ROLE` (a template id and
   * one of its roles).
   */
  resolve(ref: string): TemplateView & { revision: TemplateRevision } {
    const store = this.ctx.stores.templates;
    const colon = ref.lastIndexOf(':');
    let template: TemplateRecord | undefined;
    if (colon > 0) {
      const [id, role] = [ref.slice(0, colon), ref.slice(colon + 1)];
      template = store.byTemplateId(id).find((t) => t.role === role) ?? store.get(id);
      if (template && template.role !== role) template = undefined;
      if (!template) {
        const roles = store.byTemplateId(id).map((t) => t.role);
        throw new CellError(ErrorCodes.NOT_FOUND, `no template ${id} with role ${role}${roles.length ? ` (roles: ${roles.join(', ')})` : ''}`);
      }
    } else {
      template = store.get(ref);
      if (!template) {
        const variants = store.byTemplateId(ref);
        if (variants.length > 1) {
          throw new CellError(ErrorCodes.AMBIGUOUS_REF, `template ${ref} has several roles: say which, e.g. ${ref}:${variants[0]!.role} (roles: ${variants.map((v) => v.role).join(', ')})`);
        }
        template = variants[0];
      }
      if (!template) {
        const known = store.list().map((t) => t.name);
        throw new CellError(ErrorCodes.NOT_FOUND, `no such template: ${ref}${known.length ? ` (templates: ${known.join(', ')})` : ''}; build one with cell template build FILE`);
      }
    }
    const revision = template.currentRevision ? store.revision(template.currentRevision) : undefined;
    if (!revision) throw new CellError(ErrorCodes.NOT_FOUND, `template ${template.name} has no revision: build it with cell template build FILE`);
    return { template, revision };
  }

  /** Sends a variant's current revision to a registry: its snapshots, then an index over them (engine/template-registry.ts). */
  push(ref: string, reference: string, opts: { insecureRegistries?: string[]; onProgress?: TransferProgress } = {}): Promise<TemplatePushResult> {
    return pushTemplate(this.snapshots, this.images.registryAccess(opts.insecureRegistries), this.resolve(ref), reference, opts);
  }

  /**
   * Fetches a template pushed with `push`: its snapshots (each refused before its RAM is fetched
   * if this host cannot restore it), then its revision, made the variant's current one. (The
   * action cache is not pushed: a build of the same file here runs its steps again, then finds the
   * revision by its key and keeps it.)
   */
  async pull(reference: string, opts: { insecureRegistries?: string[]; onProgress?: TransferProgress } = {}): Promise<TemplateView & { revision: TemplateRevision }> {
    const pulled = await pullTemplate(this.snapshots, this.images.registryAccess(opts.insecureRegistries), reference, opts);
    const { document: doc, disk, warm } = pulled;
    const revisionHash = revisionHashOf(doc.cacheKey, disk.id, warm?.id ?? null);
    const store = this.ctx.stores.templates;
    const revision: TemplateRevision = store.revision(revisionHash.slice(0, 32)) ?? {
      id: revisionHash.slice(0, 32),
      templateName: doc.name,
      revisionHash,
      cacheKey: doc.cacheKey,
      inputsHash: doc.inputsHash,
      schemaVersion: doc.schemaVersion,
      variant: doc.variant,
      service: doc.service,
      diskSnapshot: disk.id,
      warmSnapshot: warm?.id ?? null,
      builtAt: doc.builtAt,
    };
    if (revision.templateName !== doc.name) {
      throw new CellError(ErrorCodes.CONFLICT, `${pulled.reference}: its revision ${shortId(revision.id)} is here already as template ${revision.templateName}`);
    }
    const record = { name: doc.name, templateId: doc.templateId, role: doc.role };
    this.ctx.db.transaction(() => {
      if (!store.revision(revision.id)) store.insertRevision(revision);
      store.setCurrent(record, revision.id, new Date().toISOString());
      store.recordSource(pulled.reference, revision.id);
    })();
    await this.pruneRevisions(doc.name);
    // Pools are this host's choice (`pool` in a template file built here, or cell snapshot pool).
    await this.applyPool(doc.variant, revision.warmSnapshot);
    return { template: store.get(doc.name)!, revision };
  }

  /** Removes variants (by name, NAME:ROLE, or every variant of a template id) and their warm snapshots. */
  async remove(ref: string, force = false): Promise<string[]> {
    const store = this.ctx.stores.templates;
    const targets = store.get(ref) ? [store.get(ref)!] : ref.includes(':') ? [this.resolve(ref).template] : store.byTemplateId(ref);
    if (targets.length === 0) throw new CellError(ErrorCodes.NOT_FOUND, `no such template: ${ref}`);
    for (const t of targets) {
      const warm = store.revisions(t.name).map((r) => r.warmSnapshot).filter((id): id is string => id !== null);
      const inUse = warm.flatMap((id) => this.ctx.stores.vms.onSnapshot(id).map((vm) => vm.name));
      if (inUse.length > 0 && !force) {
        throw new CellError(ErrorCodes.CONFLICT, `template ${t.name} is in use by VMs ${inUse.join(', ')}: remove them or use --force`);
      }
      this.ctx.db.transaction(() => store.delete(t.name))();
      for (const id of warm) if (this.snapshots.get(id)) await this.snapshots.remove(id, true);
    }
    return targets.map((t) => t.name);
  }

  /**
   * A VM for `run --template`: a fork of the revision's warm snapshot when it has one (and the
   * backend restores snapshots), else a cold boot of the built disk with the service started and
   * awaited. Its spec records which it was.
   */
  /**
   * The variant `ref` names here, or a registry reference (it has a '/', which no variant name
   * has) pulled on first use, as `docker run` pulls an image. Pulled again when the variant's
   * current revision is no longer the one pulled as that reference (built or pulled since).
   */
  async resolveOrPull(ref: string, opts: { insecureRegistries?: string[] } = {}): Promise<string> {
    if (!ref.includes('/')) return ref;
    const store = this.ctx.stores.templates;
    const known = store.pulledAs(formatReference(parseReference(ref)));
    if (known && store.get(known.templateName)?.currentRevision === known.id) return known.templateName;
    return (await this.pull(ref, opts)).template.name;
  }

  async startVm(ref: string, name: string, overrides: Pick<VmSpec, 'cmd' | 'env' | 'workingDir' | 'user' | 'timeoutSec' | 'autoRemove' | 'health' | 'timeouts'>): Promise<VmRecord> {
    const { template, revision } = this.resolve(ref);
    const warm = revision.warmSnapshot ? this.snapshots.get(revision.warmSnapshot) : undefined;
    const canRestore = this.ctx.backend.capabilities.snapshots;
    if (warm && canRestore) {
      const start: TemplateStart = { name: template.name, revision: revision.id, start: 'warm', reason: `forked snapshot ${shortId(warm.id)}` };
      const [vm] = await this.snapshots.fork(warm.id, {
        count: 1,
        name,
        overrides: {
          ...overrides,
          env: mergeEnv(warm.spec.env, overrides.env),
          workingDir: overrides.workingDir || warm.spec.workingDir,
          user: overrides.user || warm.spec.user,
          template: start,
          // Its service's ports, on free host ports of its own: it serves on them at once.
          ...(revision.service?.ports && warm.spec.networks?.length ? { ports: revision.service.ports } : {}),
        },
      });
      return vm!;
    }
    const reason = !canRestore ? 'this backend cannot restore snapshots' : revision.warmSnapshot ? 'its snapshot is gone' : 'the revision has no snapshot (build it with --snapshot)';
    return this.coldVm(revision, name, overrides, { name: template.name, revision: revision.id, start: 'cold', reason });
  }

  /** Boots the built disk with the variant's resources and brings its service up. */
  private async coldVm(
    revision: Pick<TemplateRevision, 'templateName' | 'diskSnapshot' | 'variant' | 'service'>,
    name: string,
    overrides: Pick<VmSpec, 'cmd' | 'env' | 'workingDir' | 'user' | 'timeoutSec' | 'autoRemove' | 'health' | 'timeouts'>,
    start: TemplateStart | undefined,
    signal?: AbortSignal,
  ): Promise<VmRecord> {
    const disk = this.snapshots.get(revision.diskSnapshot);
    if (!disk) throw new CellError(ErrorCodes.NOT_FOUND, `template ${revision.templateName}: its built disk (snapshot ${shortId(revision.diskSnapshot)}) is gone; rebuild it`);
    const spec: VmSpec = {
      ...disk.spec,
      cpus: revision.variant.vcpus,
      memoryMib: revision.variant.memMib,
      ...(revision.variant.dataDiskMib > 0 ? { dataDiskMib: revision.variant.dataDiskMib } : {}),
      ...overrides,
      env: mergeEnv(disk.spec.env, overrides.env),
      workingDir: overrides.workingDir || disk.spec.workingDir,
      user: overrides.user || disk.spec.user,
      ...(start ? { template: start } : {}),
      ...(revision.service?.ports && disk.spec.networks?.length ? { ports: revision.service.ports } : {}),
    };
    // The VM a template build boots to snapshot is its own to remove: gone after a crash.
    const vm = await this.vms.record(this.vms.availableName(name), spec, disk.id, undefined, { ephemeral: start === undefined });
    try {
      const running = await this.vms.withLock(vm.id, () => this.vms.boot(vm.id));
      if (revision.service) await this.startService(running, revision.service, signal);
      return running;
    } catch (err) {
      await this.vms.remove(vm.id, true).catch(() => {});
      throw err;
    }
  }

  /** Starts the service in the background (its output goes to the VM's log) and awaits its ready check. */
  private async startService(vm: VmRecord, service: TemplateService, signal?: AbortSignal): Promise<void> {
    const live = this.ctx.live.require(vm.id);
    const { uid, gid } = parseUser(vm.spec.user);
    const ctx = { env: vm.spec.env, cwd: vm.spec.workingDir, uid, gid, signal };
    const log: OutputSink = {
      stdout: (c) => this.vms.logs.append(vm.id, 'stdout', c),
      stderr: (c) => this.vms.logs.append(vm.id, 'stderr', c),
    };
    const running = runGuestCommand(live.agent, { ...ctx, argv: service.start, timeoutSec: 0 }, log);
    running.catch(() => {});
    if (service.ready) await awaitReady(live.agent, service.ready, { ...ctx, serviceExit: running.then((r) => r.exitCode) });
  }

  /** Boots the variant cold, brings its service up and snapshots it (the VM goes away). */
  private async warmSnapshot(variant: TemplateVariant, disk: SnapshotRecord, service: TemplateService | null, cacheKey: string, signal?: AbortSignal): Promise<SnapshotRecord> {
    const revision = { templateName: variant.name, diskSnapshot: disk.id, variant, service };
    const vm = await this.coldVm(revision, `${variant.name}-template-build`, { cmd: [], env: [], workingDir: '', user: '', timeoutSec: 0, autoRemove: false }, undefined, signal);
    try {
      const name = `${variant.name}-warm-${cacheKey.slice(0, 8)}-${randomBytes(2).toString('hex')}`;
      return await this.snapshots.take(vm.id, { name, stop: true });
    } finally {
      await this.vms.remove(vm.id, true).catch(() => {});
    }
  }

  /** Whether a revision's snapshots are all still there. */
  private intact(r: TemplateRevision): boolean {
    const store = this.ctx.stores.snapshots;
    return store.get(r.diskSnapshot) !== undefined && (r.warmSnapshot === null || store.get(r.warmSnapshot) !== undefined);
  }

  /** Keeps the current revision and the newest few others; older ones and their warm snapshots go. */
  private async pruneRevisions(name: string): Promise<void> {
    const store = this.ctx.stores.templates;
    const current = store.get(name)?.currentRevision;
    const old = store.revisions(name).filter((r) => r.id !== current).slice(KEEP_REVISIONS);
    for (const r of old) {
      store.deleteRevision(r.id);
      const warm = r.warmSnapshot;
      if (warm && this.snapshots.get(warm) && this.snapshots.removable(warm)) {
        await this.snapshots.remove(warm);
      }
    }
  }
}
