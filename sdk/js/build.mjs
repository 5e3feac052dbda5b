// Builds a JavaScript plugin into a component:
//   node sdk/js/build.mjs SOURCE.js WIT_DIR OUT.wasm [starlingmonkey|quickjs]
// (WIT_DIR holds world `plugin`). The engine: componentize-js (SpiderMonkey's
// StarlingMonkey; the default) or componentize-qjs (QuickJS: smaller, faster
// per message; docs/plugins/javascript.md says what differs). Each is
// imported from $COMPONENTIZE_JS / $COMPONENTIZE_QJS (paths, as
// scripts/build-guest.sh sets them) or by package name.
import { readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';

const [source, wit, out, engine = 'starlingmonkey'] = process.argv.slice(2);
if (!source || !wit || !out || !['starlingmonkey', 'quickjs'].includes(engine)) {
  console.error('usage: node build.mjs SOURCE.js WIT_DIR OUT.wasm [starlingmonkey|quickjs]');
  process.exit(1);
}
let component;
if (engine === 'quickjs') {
  const require = createRequire(import.meta.url);
  const { componentize } = require(process.env.COMPONENTIZE_QJS ?? 'componentize-qjs');
  const path = resolve(source);
  ({ component } = await componentize({
    witPath: wit,
    jsSource: await readFile(path, 'utf8'),
    jsPath: path,
    // Imports may reach up to the repository (sdk/js/jetplug.js).
    moduleRoot: process.env.JETPLUG_JS_ROOT ?? dirname(path),
    world: 'plugin',
    // The host runs components without the component-model async ABI.
    sync: true,
  }));
} else {
  const { componentize } = await import(process.env.COMPONENTIZE_JS ?? '@bytecodealliance/componentize-js');
  ({ component } = await componentize({
    sourcePath: source,
    witPath: wit,
    worldName: 'plugin',
    disableFeatures: ['http', 'fetch-event'],
  }));
}
await writeFile(out, component);
