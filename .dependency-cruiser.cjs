/**
 * The layers of docs/architecture.md, checked on every test run (test/unit/layers.test.ts).
 * Type-only imports count (tsPreCompilationDeps): a cycle through `import type` is still a cycle
 * in what a reader has to understand.
 */
const only = (from, allowed, comment) => ({
  name: `${from}-imports-only-${allowed.join('-')}`,
  comment,
  severity: 'error',
  from: { path: `^src/${from}/` },
  to: { path: '^src/', pathNot: `^src/(${[from, ...allowed].join('|')})/` },
});

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'Services are wired in one direction (engine/engine.ts); modules never import each other in a circle.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    only('domain', [], 'domain is types and rules: it knows no files, processes, SQL or HTTP of ours'),
    only('store', ['domain'], 'persistence knows records, not VMs or HTTP'),
    only('vmm', ['domain'], 'VMM drivers know machines, not records or the engine'),
    only('agent', ['domain'], 'the agent protocol knows frames, not QEMU or records'),
    only('image', ['domain', 'store'], 'OCI images know blobs and records, not VMs'),
    only('host', ['domain', 'store', 'image'], 'host set-up knows packages and files, not VMs'),
    only('network', ['domain'], 'host networking knows namespaces, links, rules and sockets, not VMs or records'),
    only('api', ['domain'], 'the wire contract is shared by server and SDK and knows neither'),
    only('server', ['domain', 'api', 'engine'], 'celld turns HTTP into engine calls; it does not reach past the engine'),
    only('sdk', ['domain', 'api'], 'the SDK speaks HTTP only: it never imports the engine or the server'),
    only('cli', ['domain', 'api', 'sdk'], 'the CLI uses only the SDK'),
    only('ui', ['domain', 'api'], 'the dashboard is a browser page: it speaks the API over HTTP, as the SDK does'),
    {
      name: 'engine-knows-no-http',
      comment: 'the engine is below the API: it never imports api, server, sdk or cli',
      severity: 'error',
      from: { path: '^src/engine/' },
      to: { path: '^src/(api|server|sdk|cli)/' },
    },
    {
      name: 'engine-services-use-the-backend-contract',
      comment: 'engine services program against vmm/backend.ts; only the composition root (engine.ts) and host set-up name the QEMU driver',
      severity: 'error',
      from: { path: '^src/engine/', pathNot: '^src/engine/(engine|host-readiness)\\.ts$' },
      to: { path: '^src/vmm/qemu/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(node_modules|dist)/' },
  },
};
