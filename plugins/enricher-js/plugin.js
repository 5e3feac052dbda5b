// enricher (JavaScript): for every AIVO event, publishes a derived event to
// `<prefix>.<original subject>` (default prefix `enriched`) carrying the
// original fields, a `grade` from the score and where it came from. The
// publish uses a message id derived from the source's origin, so a
// redelivered or redriven event does not publish twice within the stream's duplicate
// window.
//
// Decisions: published → ack; payload not JSON or not an object → term;
// NATS unavailable → retry (host backoff); publish refused (outside the
// grant, no stream for the subject) → term with the reason.
//
// Config: `prefix` (default `enriched`), `pass_mark` (default 50).

import { publish } from 'jetplug:plugin/publish@0.1.1';
import { Plugin, exportPlugin, ack, retry, term, jsonPayload, warn, idempotencyKey } from '../../sdk/js/jetplug.js';

class Enricher extends Plugin {
  constructor(config) {
    super(config);
    config.denyUnknown(['prefix', 'pass_mark']);
    this.prefix = config.get('prefix', 'enriched');
    this.passMark = config.getNumber('pass_mark', 50);
  }

  handle(msg) {
    let event;
    try {
      event = jsonPayload(msg);
    } catch (e) {
      return term(e.message);
    }
    if (event === null || typeof event !== 'object' || Array.isArray(event)) {
      return term('payload is not a JSON object');
    }
    const derived = {
      ...event,
      grade: typeof event.score === 'number' ? (event.score >= this.passMark ? 'pass' : 'fail') : 'unknown',
      source: { stream: msg.stream, seq: Number(msg.streamSeq), subject: msg.subject },
    };
    const body = new TextEncoder().encode(JSON.stringify(derived));
    try {
      publish({
        subject: `${this.prefix}.${msg.subject}`,
        headers: [['content-type', 'application/json']],
        payload: body,
        messageId: `enricher:${idempotencyKey(msg)}`,
      });
      return ack();
    } catch (e) {
      const err = e?.payload ?? { tag: 'other', val: String(e) };
      if (err.tag === 'unavailable') {
        warn(`enricher: publish failed, will retry: ${err.val}`);
        return retry();
      }
      return term(`publish refused (${err.tag}): ${err.val ?? ''}`);
    }
  }
}

export const handler = exportPlugin(Enricher);
