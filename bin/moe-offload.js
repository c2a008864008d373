#!/usr/bin/env node
// Launcher: the CLI is compiled TypeScript under dist/ (built by `npm install`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(main))) {
  process.stderr.write('moe-offload: not built yet; run `npm install` (or `npm run build`) in the package directory\n');
  process.exit(2);
}
await import(main.href);
