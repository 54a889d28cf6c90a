#!/usr/bin/env node
// A solc command-line front end that py-solc-x and brownie can drive.
//
// The solcjs CLI is unusable for them: it rejects --allow-paths, prints a
// non-JSON banner on stdout and truncates piped output at 64 KiB because it
// exits right after console.log. This program calls the `solc` package's
// compile() with an import callback and writes the whole JSON before exiting.
'use strict';
const fs = require('fs');
const path = require('path');

const projectRoot = path.resolve(__dirname, '..');
const solcPath = path.join(projectRoot, 'node_modules', 'solc');

function parseArgs(argv) {
  const args = { allowPaths: [], basePath: null, standardJson: false, version: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--version') args.version = true;
    else if (arg === '--standard-json') args.standardJson = true;
    else if (arg === '--allow-paths') args.allowPaths.push(...argv[++i].split(','));
    else if (arg === '--base-path') args.basePath = argv[++i];
    // Other flags (e.g. "-") have no meaning for standard JSON input.
  }
  return args;
}

function makeImportCallback(args) {
  const roots = [args.basePath, process.cwd(), ...args.allowPaths, path.join(projectRoot, 'node_modules'), projectRoot]
    .filter(Boolean);
  return function findImport(importPath) {
    const candidates = path.isAbsolute(importPath)
      ? [importPath]
      : roots.map((root) => path.join(root, importPath));
    for (const candidate of candidates) {
      try {
        return { contents: fs.readFileSync(candidate, 'utf8') };
      } catch (_) {
        // try the next root
      }
    }
    return { error: `File not found: ${importPath} (looked in ${roots.join(', ')})` };
  };
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const solc = require(solcPath);
  if (args.version) {
    process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
    return;
  }
  if (!args.standardJson) {
    process.stderr.write('Only --standard-json and --version are supported by this front end.\n');
    process.exitCode = 2;
    return;
  }
  const input = fs.readFileSync(0, 'utf8');
  const output = solc.compile(input, { import: makeImportCallback(args) });
  // write() with a callback, not console.log + exit, so large outputs are not cut.
  process.stdout.write(output, () => {});
}

main();
