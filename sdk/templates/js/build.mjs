// Builds {{name}}.wasm from plugin.js: `node build.mjs` with componentize-js
// (StarlingMonkey), `node build.mjs quickjs` with componentize-qjs (QuickJS:
// a smaller component, faster per message; see the README for what differs).
import { readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

const engine = process.argv[2] ?? 'starlingmonkey';
let component;
if (engine === 'quickjs') {
  let componentize;
  try {
    ({ componentize } = createRequire(import.meta.url)('componentize-qjs'));
  } catch {
    console.error('componentize-qjs not found: run `npm install --save-dev componentize-qjs@0.4.5` first');
    process.exit(1);
  }
  ({ component } = await componentize({
    witPath: 'wit',
    jsSource: await readFile('plugin.js', 'utf8'),
    jsPath: 'plugin.js',
    world: 'plugin',
    // The host runs components without the component-model async ABI.
    sync: true,
  }));
} else if (engine === 'starlingmonkey') {
  let componentize;
  try {
    ({ componentize } = await import('@bytecodealliance/componentize-js'));
  } catch {
    console.error('@bytecodealliance/componentize-js not found: run `npm install` first');
    process.exit(1);
  }
  ({ component } = await componentize({
    sourcePath: 'plugin.js',
    witPath: 'wit',
    worldName: 'plugin',
    // The host offers no HTTP: leave the runtime's HTTP support out.
    disableFeatures: ['http', 'fetch-event'],
  }));
} else {
  console.error(`unknown engine \`${engine}\`: use starlingmonkey (the default) or quickjs`);
  process.exit(1);
}
await writeFile('{{name}}.wasm', component);
console.log(`wrote {{name}}.wasm (${(component.length / 1048576).toFixed(1)} MiB, ${engine})`);
