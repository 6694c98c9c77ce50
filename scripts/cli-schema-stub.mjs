// What the CLI bundle has in place of TypeBox (scripts/bundle-cli.mjs). The CLI reaches celld
// through the API's route declarations (src/api/*.ts), which build their request and reply schemas
// with TypeBox when they load; only celld reads those schemas (validation, OpenAPI). Building them
// for real cost every `cell` command ~10 ms (142 KB of TypeBox to load, and the schemas). These
// builders keep what the API files themselves read while they load (an object's `properties`, a
// union's `anyOf`, a literal's `const`) and nothing else.
const builders = {
  Object: (properties, options) => ({ type: 'object', properties, ...options }),
  Union: (anyOf, options) => ({ anyOf, ...options }),
  Intersect: (allOf, options) => ({ allOf, ...options }),
  Composite: (schemas, options) => ({ type: 'object', properties: Object.assign({}, ...schemas.map((s) => s.properties)), ...options }),
  Omit: (schema, keys) => ({ type: 'object', properties: Object.fromEntries(Object.entries(schema.properties ?? {}).filter(([k]) => !keys.includes(k))) }),
  Literal: (value) => ({ const: value }),
  Optional: (schema) => schema,
  Array: (items, options) => ({ type: 'array', items, ...options }),
};

/** Any other builder answers a schema that says what it was (never read by the CLI). */
export const Type = new Proxy(builders, {
  get: (target, name) => target[name] ?? ((_first, options) => ({ builder: String(name), ...(typeof options === 'object' ? options : {}) })),
});
