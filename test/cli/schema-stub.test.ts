import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Type } from '@sinclair/typebox';
// @ts-expect-error: a plain ES module of the build (scripts/bundle-cli.mjs puts it in place of TypeBox)
import { Type as Stub } from '../../scripts/cli-schema-stub.mjs';

/**
 * The CLI bundle builds the API's schemas with scripts/cli-schema-stub.mjs instead of TypeBox. The API
 * files read `properties`, `anyOf` and `const` of schemas they built while they load: the stub must
 * give what TypeBox gives there.
 */
type Builder = typeof Type;
const both = (build: (t: Builder) => { properties?: object; anyOf?: unknown[]; const?: unknown }) => [build(Type), build(Stub as Builder)] as const;

test('the CLI schema stub keeps the properties, unions and literals TypeBox builds', () => {
  const shapes = [
    both((t) => t.Object({ a: t.String(), b: t.Optional(t.Integer()), c: t.Array(t.Literal('x')) })),
    both((t) => t.Composite([t.Object({ a: t.String() }), t.Object({ b: t.Number() })])),
    both((t) => t.Omit(t.Object({ a: t.String(), b: t.Number(), c: t.Null() }), ['b'])),
  ];
  for (const [real, stub] of shapes) assert.deepEqual(Object.keys(stub.properties!), Object.keys(real.properties!));
  const [realUnion, stubUnion] = both((t) => t.Union([t.Literal('a'), t.Literal(2), t.Object({ x: t.Boolean() })]));
  assert.equal(stubUnion.anyOf!.length, realUnion.anyOf!.length);
  assert.deepEqual(
    (stubUnion.anyOf as { const?: unknown }[]).map((s) => s.const),
    (realUnion.anyOf as { const?: unknown }[]).map((s) => s.const),
  );
  // A builder the stub does not know still answers (a schema nobody in the CLI reads), never throws.
  assert.equal(typeof (Stub as Builder).Unsafe({}), 'object');
});
