import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

test('native addon loads', () => {
  const require = createRequire(import.meta.url);
  const addon = require('../../native/build/Release/moe_native.node') as { version(): number };
  assert.equal(addon.version(), 1);
});
