/** Endpoint paths, shared so the SDK cannot drift from the server. */
export const Routes = {
  ping: '/v1/ping',
  info: '/v1/info',
  setup: '/v1/setup',
  vms: '/v1/vms',
  vmRun: '/v1/vms/run',
  vm: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}`,
  vmStart: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/start`,
  vmStop: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/stop`,
  vmExec: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/exec`,
  vmLogs: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/logs`,
  execStdin: (execId: string) => `/v1/execs/${encodeURIComponent(execId)}/stdin`,
  images: '/v1/images',
  imagePull: '/v1/images/pull',
  imageImport: '/v1/images/import',
  imagePush: '/v1/images/push',
  imageExport: '/v1/images/export',
  imagePrune: '/v1/images/prune',
  login: '/v1/registries/login',
  logout: '/v1/registries/logout',
  image: (ref: string) => `/v1/images/${encodeURIComponent(ref)}`,
  snapshots: '/v1/snapshots',
  snapshot: (ref: string) => `/v1/snapshots/${encodeURIComponent(ref)}`,
  snapshotFork: (ref: string) => `/v1/snapshots/${encodeURIComponent(ref)}/fork`,
  snapshotExport: (ref: string) => `/v1/snapshots/${encodeURIComponent(ref)}/export`,
  snapshotImport: '/v1/snapshots/import',
  snapshotPrune: '/v1/snapshots/prune',
  vmSnapshot: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/snapshot`,
  vmRestore: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/restore`,
  vmFileStat: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/files/stat`,
  vmFileContent: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/files/content`,
  vmCopyIn: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/files/copy-in`,
  vmCopyOut: (ref: string) => `/v1/vms/${encodeURIComponent(ref)}/files/copy-out`,
  actions: '/v1/actions',
  builds: '/v1/builds',
  cache: '/v1/cache',
  cachePrune: '/v1/cache/prune',
  templates: '/v1/templates',
  templateBuild: '/v1/templates/build',
  template: (ref: string) => `/v1/templates/${encodeURIComponent(ref)}`,
} as const;

/** HTTP status for each error code. */
export function statusForCode(code: string): number {
  switch (code) {
    case 'invalid_argument':
    case 'bad_build_file':
      return 400;
    case 'not_found':
    case 'image_not_found':
      return 404;
    case 'ambiguous_ref':
    case 'conflict':
    case 'vm_not_running':
    case 'incompatible_snapshot':
      return 409;
    case 'host_missing_dependency':
      return 424;
    case 'daemon_unavailable':
      return 503;
    default:
      return 500;
  }
}
