// {{name}}: a jetplug plugin. One example of each decision:
// ack (done), retry (not now), term (never: dead-letter it).

import { Plugin, exportPlugin, ack, retry, term, jsonPayload, info } from './jetplug.js';

class MyPlugin extends Plugin {
  // Config keys: `max_amount` (default 1000).
  constructor(config) {
    super(config);
    config.denyUnknown(['max_amount']);
    this.maxAmount = config.getNumber('max_amount', 1000);
  }

  handle(msg) {
    // Not JSON, or not an order: it will never work, dead-letter it.
    let order;
    try {
      order = jsonPayload(msg);
    } catch (e) {
      return term(e.message);
    }
    if (typeof order?.id !== 'string' || typeof order?.amount !== 'number') {
      return term('not an order: needs a string `id` and a number `amount`');
    }
    if (order.amount < 0) return term(`order ${order.id}: negative amount`);
    // Too big to take now: ask for it again in five seconds.
    if (order.amount > this.maxAmount) return retry(5000);
    info(`order ${order.id} accepted`);
    return ack();
  }
}

export const handler = exportPlugin(MyPlugin);
