// Helpers for jetplug plugins written in JavaScript (built with
// @bytecodealliance/componentize-js). A plugin is a class with
// `constructor(config)` and `handle(msg)` (or `handleBatch(batch)`);
// `export const handler = exportPlugin(MyPlugin);` makes it the component's
// handler:
//
//   import { Plugin, exportPlugin, ack, term, jsonPayload } from './jetplug.js';
//   class Hello extends Plugin {
//     handle(msg) {
//       try { jsonPayload(msg); } catch (e) { return term(e.message); }
//       return ack();
//     }
//   }
//   export const handler = exportPlugin(Hello);
//
// Capabilities are imports of the WIT package, e.g.
// `import { publish } from 'jetplug:plugin/publish@0.1.1';`, available when
// the plugin's world (wit/plugin.wit) imports them: list there only what the
// plugin is granted. A failed call throws; `witError(e)` is the WIT error,
// e.g. `{ tag: 'unavailable', val: '...' }` (componentize-js throws an Error
// whose `payload` is it, componentize-qjs throws it as it is).
// This module itself imports `log` only.
//
// Targets the WIT package jetplug:plugin@0.1.1 (`jetplug wit` prints it).

import { log as hostLog } from 'jetplug:plugin/log@0.1.1';

// --- decisions ---------------------------------------------------------------

/** Done: the host acknowledges the message. */
export const ack = () => ({ tag: 'ack' });

/** Not now: redeliver after `delayMs` (omitted: the host's backoff). */
export const retry = (delayMs) =>
  delayMs == null
    ? { tag: 'retry', val: undefined }
    : { tag: 'retry', val: Math.max(0, Math.min(Math.trunc(delayMs), 0xffffffff)) };

/** Never: dead-letter the message with `reason`, then terminate it. */
export const term = (reason) => ({ tag: 'term', val: String(reason) });

/** The WIT error a failed capability call threw, under either engine. */
export const witError = (e) => (e && typeof e === 'object' && 'payload' in e ? e.payload : e);

// --- payloads and headers ---------------------------------------------------------

/** The payload is not what was asked for; `e.message` is a ready reason. */
export class PayloadError extends Error {}

// StarlingMonkey (componentize-js) has TextDecoder; QuickJS (componentize-qjs)
// does not, so there the payload is decoded here.
let utf8 = null;
function decodeUtf8(bytes) {
  if (typeof TextDecoder === 'function') {
    utf8 ??= new TextDecoder('utf-8', { fatal: true });
    return utf8.decode(bytes);
  }
  const parts = [];
  let i = 0;
  while (i < bytes.length) {
    // A run of ASCII at once, then one multi-byte character.
    let j = i;
    while (j < bytes.length && j - i < 4096 && bytes[j] < 0x80) j++;
    if (j > i) {
      parts.push(String.fromCharCode.apply(null, bytes.subarray(i, j)));
      i = j;
      continue;
    }
    const b = bytes[i];
    const n = b >= 0xc2 && b < 0xe0 ? 1 : b >= 0xe0 && b < 0xf0 ? 2 : b >= 0xf0 && b < 0xf5 ? 3 : -1;
    if (n < 0 || i + n >= bytes.length) throw new TypeError(`invalid UTF-8 at byte ${i}`);
    let c = b & (0x3f >> n);
    for (let k = 1; k <= n; k++) {
      const x = bytes[i + k];
      if ((x & 0xc0) !== 0x80) throw new TypeError(`invalid UTF-8 at byte ${i + k}`);
      c = (c << 6) | (x & 0x3f);
    }
    if ((n === 2 && (c < 0x800 || (c >= 0xd800 && c < 0xe000))) || (n === 3 && (c < 0x10000 || c > 0x10ffff))) {
      throw new TypeError(`invalid UTF-8 at byte ${i}`);
    }
    parts.push(String.fromCodePoint(c));
    i += n + 1;
  }
  return parts.join('');
}

/** `s` as UTF-8 bytes, e.g. a payload to publish (TextEncoder is
 * StarlingMonkey's only; a lone surrogate becomes U+FFFD as it does there). */
export function bytes(s) {
  if (typeof TextEncoder === 'function') return new TextEncoder().encode(s);
  const out = [];
  for (const ch of String(s)) {
    const c = ch.codePointAt(0);
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c >= 0xd800 && c < 0xe000) out.push(0xef, 0xbf, 0xbd);
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return new Uint8Array(out);
}

/** The payload as UTF-8 text. */
export function text(msg) {
  try {
    return decodeUtf8(msg.payload);
  } catch (e) {
    throw new PayloadError(`payload is not UTF-8 text: ${e.message ?? e}`);
  }
}

/**
 * The payload parsed as JSON; with `required` field names, it must be an
 * object holding each of them. A parse error says `payload is not JSON: …`,
 * a shape error `payload JSON has the wrong shape: …`.
 */
export function jsonPayload(msg, required = []) {
  const body = text(msg);
  let value;
  try {
    value = JSON.parse(body);
  } catch (e) {
    throw new PayloadError(`payload is not JSON: ${e.message ?? e}`);
  }
  if (required.length > 0) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      const got = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
      throw new PayloadError(`payload JSON has the wrong shape: expected an object, got ${got}`);
    }
    for (const name of required) {
      if (!(name in value)) {
        throw new PayloadError(`payload JSON has the wrong shape: missing field \`${name}\``);
      }
    }
  }
  return value;
}

/** The first value of header `name` (exact, then ignoring case). */
export function header(msg, name, fallback = undefined) {
  const exact = msg.headers.find(([k]) => k === name);
  if (exact) return exact[1];
  const lower = name.toLowerCase();
  const loose = msg.headers.find(([k]) => k.toLowerCase() === lower);
  return loose ? loose[1] : fallback;
}

/**
 * Where the message was first stored, `{ stream, sequence, publishedAtMs }`:
 * for a message redriven from the dead-letter queue, from its
 * `Jetplug-Origin` / `Jetplug-Origin-Published-Ms` headers.
 */
export function origin(msg) {
  const value = header(msg, "Jetplug-Origin", "");
  const at = value.lastIndexOf(":");
  const stream = at > 0 ? value.slice(0, at) : "";
  const seq = at > 0 ? value.slice(at + 1).trim() : "";
  if (stream && /^[0-9]+$/.test(seq)) {
    const published = header(msg, "Jetplug-Origin-Published-Ms", "").trim();
    // 64-bit numbers as the engine gives them: BigInt (componentize-js), number (QuickJS).
    const int = typeof msg.streamSeq === "bigint" ? BigInt : Number;
    return {
      stream,
      sequence: int(seq),
      publishedAtMs: /^-?[0-9]+$/.test(published) ? int(published) : msg.publishedAtMs,
    };
  }
  return { stream: msg.stream, sequence: msg.streamSeq, publishedAtMs: msg.publishedAtMs };
}

/** `STREAM:SEQUENCE` of the message's origin: the same on every redelivery
 * and after a redrive from the dead-letter queue. */
export const idempotencyKey = (msg) => {
  const o = origin(msg);
  return `${o.stream}:${o.sequence}`;
};

// --- config ---------------------------------------------------------------------

/** A refused configuration, naming the key: config key `k`: reason. */
export class ConfigError extends Error {
  constructor(key, reason) {
    super(key ? `config key \`${key}\`: ${reason}` : reason);
    this.key = key;
  }
}

/** The plugin's `config` table (string keys and values). */
export class Config {
  constructor(pairs) {
    this.values = new Map(pairs);
  }
  get(key, fallback = undefined) {
    return this.values.has(key) ? this.values.get(key) : fallback;
  }
  require(key) {
    if (!this.values.has(key)) throw new ConfigError(key, 'is required');
    const v = this.values.get(key);
    if (v === '') throw new ConfigError(key, 'must not be empty');
    return v;
  }
  getNumber(key, fallback = undefined) {
    if (!this.values.has(key)) return fallback;
    const raw = this.values.get(key);
    const n = Number(raw.trim());
    if (raw.trim() === '' || Number.isNaN(n)) throw new ConfigError(key, `\`${raw}\` is not a number`);
    return n;
  }
  getBool(key, fallback = undefined) {
    if (!this.values.has(key)) return fallback;
    const raw = this.values.get(key).trim();
    if (['true', '1', 'yes'].includes(raw)) return true;
    if (['false', '0', 'no'].includes(raw)) return false;
    throw new ConfigError(key, `\`${raw}\` is not true or false`);
  }
  denyUnknown(known) {
    for (const key of this.values.keys()) {
      if (!known.includes(key)) throw new ConfigError(key, `unknown key (known: ${known.join(', ')})`);
    }
  }
}

// --- logging ----------------------------------------------------------------------

export const debug = (message) => hostLog('debug', String(message));
export const info = (message) => hostLog('info', String(message));
export const warn = (message) => hostLog('warn', String(message));
export const error = (message) => hostLog('error', String(message));

// --- the plugin class and its export --------------------------------------------------

/** Base class: override `handle(msg)` (one message) or `handleBatch(batch)`. */
export class Plugin {
  constructor(config) {
    this.config = config;
  }
  handle(_msg) {
    throw new Error('implement handle(msg) or handleBatch(batch)');
  }
  handleBatch(batch) {
    return batch.map((m) => this.handle(m));
  }
}

/**
 * The `handler` export: `init` builds `new PluginClass(new Config(...))` (a
 * throw refuses the plugin with its message), `handle` calls `handleBatch`.
 */
export function exportPlugin(PluginClass) {
  let plugin = null;
  return {
    init(config) {
      try {
        plugin = new PluginClass(new Config(config));
      } catch (e) {
        throw String(e?.message ?? e);
      }
    },
    handle(batch) {
      return plugin.handleBatch(batch);
    },
  };
}
