// Builds {{name}}.wasm from plugin.js with componentize-js.
import { writeFile } from 'node:fs/promises';

let componentize;
try {
  ({ componentize } = await import('@bytecodealliance/componentize-js'));
} catch {
  console.error('@bytecodealliance/componentize-js not found: run `npm install` first');
  process.exit(1);
}
const { component } = await componentize({
  sourcePath: 'plugin.js',
  witPath: 'wit',
  worldName: 'plugin',
  // The host offers no HTTP: leave the runtime's HTTP support out.
  disableFeatures: ['http', 'fetch-event'],
});
await writeFile('{{name}}.wasm', component);
console.log(`wrote {{name}}.wasm (${(component.length / 1048576).toFixed(1)} MiB)`);
