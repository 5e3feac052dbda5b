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
// plugin is granted. A failed call throws an error whose `payload` is the
// WIT error, e.g. `{ tag: 'unavailable', val: '...' }`.
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

// --- payloads and headers ---------------------------------------------------------

/** The payload is not what was asked for; `e.message` is a ready reason. */
export class PayloadError extends Error {}

/** The payload as UTF-8 text. */
export function text(msg) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(msg.payload);
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
    return {
      stream,
      sequence: BigInt(seq),
      publishedAtMs: /^-?[0-9]+$/.test(published) ? BigInt(published) : msg.publishedAtMs,
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
