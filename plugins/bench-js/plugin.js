// Benchmark plugin for `jetplug-bench languages` (twin of bench-rust):
// config `mode = "noop"` (default) acks every message; `mode = "json"`
// parses each payload as JSON first (terminating what does not parse).
import { Plugin, exportPlugin, ack, term, ConfigError } from '../../sdk/js/jetplug.js';

const ACK = ack();
const decoder = new TextDecoder();

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
        JSON.parse(decoder.decode(msg.payload));
        return ACK;
      } catch (e) {
        return term(`payload is not JSON: ${e.message}`);
      }
    });
  }
}

export const handler = exportPlugin(Bench);
