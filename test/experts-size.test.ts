import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../src/model/errors.js';
import { availableMemoryBytes, defaultRamCacheBytes, parseSize } from '../src/experts/size.js';

test('parseSize: bytes, decimal and binary units, fractions, percentages', () => {
  const cases: [string, number][] = [
    ['300000', 300000],
    ['0', 0],
    ['512MiB', 512 * 1024 * 1024],
    ['512mib', 512 * 1024 * 1024],
    ['4GiB', 4 * 1024 ** 3],
    ['4 gib', 4 * 1024 ** 3],
    ['1.5GB', 1_500_000_000],
    ['1.5GiB', 1536 * 1024 * 1024],
    ['10KB', 10_000],
    ['10KiB', 10_240],
    ['3MB', 3_000_000],
    ['2TB', 2e12],
    ['1TiB', 1024 ** 4],
    ['100B', 100],
    ['100b', 100],
    ['.5KiB', 512],
    ['1.0009KB', 1000], // rounded down to whole bytes
    [' 7 ', 7],
  ];
  for (const [text, want] of cases) assert.equal(parseSize(text), want, text);
  assert.equal(parseSize('25%', { totalBytes: 1000 }), 250);
  assert.equal(parseSize('100%', { totalBytes: 1000 }), 1000);
  assert.equal(parseSize('33.3%', { totalBytes: 1000 }), 333);
  assert.equal(parseSize('0.5%', { totalBytes: 1000 }), 5);
});

test('parseSize: bad input is a UsageError that lists the accepted forms', () => {
  const bad = ['', 'abc', '-5', '5XB', '5 MiBs', '1e9', '12..5', 'MiB', '1,5GB', '150%', 'NaN', 'Infinity', '5%%'];
  for (const text of bad) {
    assert.throws(() => parseSize(text, { totalBytes: 1000 }), (err: unknown) => {
      assert.ok(err instanceof UsageError, `${text}: ${String(err)}`);
      assert.match(err.toLine(), /512MiB.*25%/);
      return true;
    }, text);
  }
  assert.throws(() => parseSize('25%'), (err: unknown) => err instanceof UsageError && /percentage needs the model/.test(err.message));
  assert.throws(() => parseSize('99999999999TiB'), UsageError);
});

test('defaultRamCacheBytes: available memory minus max(1 GiB, 10%)', () => {
  const GiB = 2 ** 30;
  assert.equal(defaultRamCacheBytes(20 * GiB), 18 * GiB); // 10% margin
  assert.equal(defaultRamCacheBytes(5 * GiB), 4 * GiB); // 1 GiB margin
  assert.equal(defaultRamCacheBytes(GiB / 2), 0);
  assert.equal(availableMemoryBytes('MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n'), 2048 * 1024);
  const live = availableMemoryBytes();
  assert.ok(live > 0 && Number.isSafeInteger(live));
  assert.ok(defaultRamCacheBytes() < live);
});
