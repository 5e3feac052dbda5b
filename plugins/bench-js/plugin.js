// Benchmark plugin for `jetplug-bench languages` (twin of bench-rust):
// config `mode = "noop"` (default) acks every message; `mode = "json"`
// parses each payload as JSON first (terminating what does not parse).
// Built on both engines: bench-js.wasm (componentize-js) and
// bench-js-quickjs.wasm (componentize-qjs).
import { Plugin, exportPlugin, ack, term, text, ConfigError } from '../../sdk/js/jetplug.js';

const ACK = ack();

class Bench extends Plugin {
  constructor(config) {
    super(config);
    config.denyUnknown(['mode']);
    const mode = config.get('mode', 'noop');
    if (mode !== 'noop' && mode !== 'json') throw new ConfigError('mode', `\`${mode}\`: use noop or json`);
    this.parse = mode === 'json';
  }

  handleBatch(batch) {
    if (!this.parse) return batch.map(() => ACK);
    return batch.map((msg) => {
      try {
        JSON.parse(text(msg));
        return ACK;
      } catch (e) {
        return term(`payload is not JSON: ${e.message}`);
      }
    });
  }
}

export const handler = exportPlugin(Bench);
