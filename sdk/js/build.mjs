// Builds a JavaScript plugin into a component with componentize-js:
//   node sdk/js/build.mjs SOURCE.js WIT_DIR OUT.wasm   (WIT_DIR holds world `plugin`)
// componentize-js is imported from $COMPONENTIZE_JS (a path to its
// src/componentize.js, as scripts/build-guest.sh sets it) or by package name.
import { writeFile } from 'node:fs/promises';

const [source, wit, out] = process.argv.slice(2);
if (!source || !wit || !out) {
  console.error('usage: node build.mjs SOURCE.js WIT_DIR OUT.wasm');
  process.exit(1);
}
const { componentize } = await import(process.env.COMPONENTIZE_JS ?? '@bytecodealliance/componentize-js');
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: 'plugin',
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile(out, component);
