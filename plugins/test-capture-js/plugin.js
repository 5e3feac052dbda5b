// test-capture-js: test-capture in JavaScript (tests only; the capture proof
// in a third language). For each message (payload: an account id) it reads
// the account's status from PostgreSQL, the time of day from `Date.now()`
// and four random bytes from `crypto.getRandomValues` (logged as a nonce),
// and terminates only when the account is `frozen` and it is past the
// `cutoff`.
//
// Config: `database` (default `db`), `cutoff` (`HH:MM` UTC, default
// `17:00`), `api_key` (logged, so a capture must mask it).

import { query } from 'jetplug:plugin/sql@0.1.1';
import { Plugin, exportPlugin, ack, retry, term, info } from '../../sdk/js/jetplug.js';

class Accounts extends Plugin {
  constructor(config) {
    super(config);
    this.database = config.get('database', 'db');
    const [hours, minutes] = config.get('cutoff', '17:00').split(':');
    this.cutoff = Number(hours) * 60 + Number(minutes);
    this.apiKey = config.get('api_key', '');
  }

  handle(msg) {
    const account = new TextDecoder().decode(msg.payload).trim();
    let rows;
    try {
      rows = query(this.database, 'SELECT status FROM accounts WHERE id = $1', [{ tag: 'text', val: account }]);
    } catch (e) {
      const err = e?.payload ?? { tag: 'other', val: String(e) };
      if (err.tag === 'unavailable') {
        return retry(100);
      }
      return term(`query failed: ${err.tag}`);
    }
    if (rows.rows.length === 0) {
      return term(`unknown account ${account}`);
    }
    const status = rows.rows[0][0].val;
    const minute = Math.floor((Math.floor(Date.now() / 1000) % 86400) / 60);
    const at = `${String(Math.floor(minute / 60)).padStart(2, '0')}:${String(minute % 60).padStart(2, '0')}`;
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    const nonce = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    info(`account ${account} is ${status} at ${at} (key ${this.apiKey}, nonce ${nonce})`);
    if (status === 'frozen' && minute >= this.cutoff) {
      return term(`cannot settle account ${account} at ${at}`);
    }
    return ack();
  }
}

export const handler = exportPlugin(Accounts);
