#!/usr/bin/env node
// The mlx-batch command: runs the bundled CLI (dist/cli.js, built by `npm run setup` or `npm run build`).
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const cli = path.join(__dirname, '..', 'dist', 'cli.js');
if (!fs.existsSync(cli)) {
  process.stderr.write(`mlx-batch: ${path.relative(process.cwd(), cli) || cli} is missing: run \`npm run setup\` (or \`npm run build\`) first\n`);
  process.exit(1);
}
require(cli).run(process.argv);
