"""Helpers for jetplug plugins written in Python (built with componentize-py).

A plugin is a class with ``__init__(self, config)`` and ``handle(self, msg)``
(or ``handle_batch(self, batch)``); ``Handler = jetplug.export(MyPlugin)``
at the bottom of ``app.py`` makes it the component's handler::

    import jetplug
    from jetplug import ack, retry, term

    class Hello(jetplug.Plugin):
        def handle(self, msg):
            try:
                event = jetplug.json_payload(msg)
            except jetplug.PayloadError as e:
                return term(str(e))
            return ack()

    Handler = jetplug.export(Hello)

Capabilities are the generated modules (``wit_world.imports.sql``,
``publish``, ``kv``), present when the plugin's world (``wit/plugin.wit``)
imports them; list there only what the plugin is granted. They raise
``componentize_py_types.Err`` carrying a ``wit_world.imports.types.Error``.
This module itself uses ``log`` only.

Targets the WIT package jetplug:plugin@0.1.1 (``jetplug wit`` prints it).
"""

import json as _json

from componentize_py_types import Err as _Err
from wit_world import exports as _exports
from wit_world.imports import log as _log
from wit_world.imports import types as _types

__all__ = [
    "Plugin", "Config", "ConfigError", "PayloadError", "export",
    "ack", "retry", "term", "text", "json_payload", "header",
    "debug", "info", "warn", "error", "idempotency_key", "origin",
]

Message = _types.Message

# --- decisions ---------------------------------------------------------------


def ack():
    """Done: the host acknowledges the message."""
    return _types.Decision_Ack()


def retry(delay_ms=None):
    """Not now: redeliver after ``delay_ms`` (None: the host's backoff)."""
    if delay_ms is not None:
        delay_ms = max(0, min(int(delay_ms), 0xFFFFFFFF))
    return _types.Decision_Retry(delay_ms)


def term(reason):
    """Never: dead-letter the message with ``reason``, then terminate it."""
    return _types.Decision_Term(str(reason))


# --- payloads and headers ------------------------------------------------------


class PayloadError(ValueError):
    """The payload is not what was asked for; ``str(e)`` is a ready reason."""


def text(msg):
    """The payload as UTF-8 text."""
    try:
        return bytes(msg.payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise PayloadError(f"payload is not UTF-8 text: {e}") from None


def json_payload(msg, required=()):
    """The payload parsed as JSON; with ``required`` field names, it must be
    an object holding each of them. A parse error says ``payload is not
    JSON: ...``, a shape error ``payload JSON has the wrong shape: ...``."""
    try:
        value = _json.loads(text(msg))
    except ValueError as e:
        if isinstance(e, PayloadError):
            raise
        raise PayloadError(f"payload is not JSON: {e}") from None
    if required:
        if not isinstance(value, dict):
            raise PayloadError(
                f"payload JSON has the wrong shape: expected an object, got {type(value).__name__}")
        for name in required:
            if name not in value:
                raise PayloadError(f"payload JSON has the wrong shape: missing field `{name}`")
    return value


def header(msg, name, default=None):
    """The first value of header ``name`` (exact, then ignoring case)."""
    for k, v in msg.headers:
        if k == name:
            return v
    lower = name.lower()
    for k, v in msg.headers:
        if k.lower() == lower:
            return v
    return default


def origin(msg):
    """``(stream, sequence, published_at_ms)`` where the message was first
    stored: for a message redriven from the dead-letter queue, from its
    ``Jetplug-Origin`` / ``Jetplug-Origin-Published-Ms`` headers."""
    value = header(msg, "Jetplug-Origin", "")
    stream, _, seq = value.rpartition(":")
    if stream and seq.strip().isdigit():
        published = header(msg, "Jetplug-Origin-Published-Ms", "").strip()
        at = int(published) if published.lstrip("-").isdigit() else msg.published_at_ms
        return (stream, int(seq), at)
    return (msg.stream, msg.stream_seq, msg.published_at_ms)


def idempotency_key(msg):
    """``STREAM:SEQUENCE`` of the message's origin: the same on every
    redelivery and after a redrive from the dead-letter queue."""
    stream, seq, _ = origin(msg)
    return f"{stream}:{seq}"


# --- config --------------------------------------------------------------------


class ConfigError(Exception):
    """A refused configuration, naming the key: ``config key `k`: reason``."""

    def __init__(self, key, reason):
        self.key, self.reason = key, reason
        super().__init__(f"config key `{key}`: {reason}" if key else reason)


class Config:
    """The plugin's ``config`` table (string keys and values)."""

    def __init__(self, pairs):
        self._values = dict(pairs)

    def get(self, key, default=None):
        return self._values.get(key, default)

    def require(self, key):
        value = self._values.get(key)
        if value is None:
            raise ConfigError(key, "is required")
        if value == "":
            raise ConfigError(key, "must not be empty")
        return value

    def _parse(self, key, default, kind, parse):
        value = self._values.get(key)
        if value is None:
            return default
        try:
            return parse(value.strip())
        except ValueError:
            raise ConfigError(key, f"`{value}` is not {kind}") from None

    def get_int(self, key, default=None):
        return self._parse(key, default, "an integer", int)

    def get_float(self, key, default=None):
        return self._parse(key, default, "a number", float)

    def get_bool(self, key, default=None):
        def parse(v):
            if v in ("true", "1", "yes"):
                return True
            if v in ("false", "0", "no"):
                return False
            raise ValueError(v)
        return self._parse(key, default, "true or false", parse)

    def deny_unknown(self, known):
        for key in self._values:
            if key not in known:
                raise ConfigError(key, f"unknown key (known: {', '.join(known)})")

    def items(self):
        return self._values.items()


# --- logging -------------------------------------------------------------------


def debug(message):
    _log.log(_log.Level.DEBUG, str(message))


def info(message):
    _log.log(_log.Level.INFO, str(message))


def warn(message):
    _log.log(_log.Level.WARN, str(message))


def error(message):
    _log.log(_log.Level.ERROR, str(message))


# --- the plugin class and its export -----------------------------------------------


class Plugin:
    """Base class: override ``handle`` (one message) or ``handle_batch``."""

    def __init__(self, config):
        self.config = config

    def handle(self, msg):
        raise NotImplementedError("implement handle(self, msg) or handle_batch(self, batch)")

    def handle_batch(self, batch):
        return [self.handle(m) for m in batch]


def export(plugin_class):
    """Returns the ``Handler`` class componentize-py exports: ``init`` builds
    ``plugin_class(Config(...))`` (an exception refuses the plugin with its
    message), ``handle`` calls the plugin's ``handle_batch``."""

    state = {}

    class Handler(_exports.Handler):
        def init(self, config):
            try:
                state["plugin"] = plugin_class(Config(config))
            except Exception as e:  # any failure refuses the plugin, with its reason
                raise _Err(str(e) or type(e).__name__) from None

        def handle(self, batch):
            return state["plugin"].handle_batch(batch)

    return Handler
