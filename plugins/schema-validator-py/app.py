"""schema-validator (Python): checks every event's JSON payload against a
JSON schema and terminates the invalid ones with the failing path as reason
(``schema: $.score: 150 is more than the maximum 100``), so they are
dead-lettered instead of reaching the pipelines behind it.

Config: ``schema`` — the schema as JSON text (default: the AIVO event
schema below). The supported keywords are the common ones: ``type``,
``required``, ``properties``, ``additionalProperties`` (false),
``items``, ``enum``, ``minimum``, ``maximum``, ``minLength``,
``maxLength``, ``pattern``. An unknown keyword refuses the plugin at load,
naming it — a schema that silently checks less than it says is worse than none.
"""

import json
import re

import jetplug
from jetplug import ConfigError, ack, term

AIVO_EVENT = {
    "type": "object",
    "required": ["student", "score"],
    "properties": {
        "student": {"type": "string", "pattern": "^s-[0-9]+$"},
        "seq": {"type": "integer", "minimum": 0},
        "score": {"type": "number", "minimum": 0, "maximum": 100},
    },
}

KEYWORDS = {
    "type", "required", "properties", "additionalProperties", "items", "enum",
    "minimum", "maximum", "minLength", "maxLength", "pattern", "title", "description",
}

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check_schema(schema, path="$"):
    """Refuses keywords this validator does not implement; compiles patterns."""
    if not isinstance(schema, dict):
        raise ValueError(f"{path}: a schema must be an object")
    for key in schema:
        if key not in KEYWORDS:
            raise ValueError(f"{path}: unsupported keyword `{key}`")
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds else []:
        if kind not in TYPES:
            raise ValueError(f"{path}: unknown type `{kind}`")
    if "pattern" in schema:
        schema["_re"] = re.compile(schema["pattern"])
    for name, sub in schema.get("properties", {}).items():
        check_schema(sub, f"{path}.{name}")
    if "items" in schema:
        check_schema(schema["items"], f"{path}[]")


def validate(value, schema, path="$"):
    """The first violation as ``PATH: what is wrong``, or None."""
    kinds = schema.get("type")
    if kinds:
        kinds = kinds if isinstance(kinds, list) else [kinds]
        if not any(TYPES[k](value) for k in kinds):
            return f"{path}: expected {' or '.join(kinds)}, got {json.dumps(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {json.dumps(value)} is not one of {json.dumps(schema['enum'])}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path}: {value} is less than the minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path}: {value} is more than the maximum {schema['maximum']}"
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            return f"{path}: shorter than {schema['minLength']} characters"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{path}: longer than {schema['maxLength']} characters"
        if "_re" in schema and not schema["_re"].search(value):
            return f"{path}: {json.dumps(value)} does not match /{schema['pattern']}/"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                return f"{path}.{name}: required property missing"
        props = schema.get("properties", {})
        for name, sub in props.items():
            if name in value:
                problem = validate(value[name], sub, f"{path}.{name}")
                if problem:
                    return problem
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(props))
            if extra:
                return f"{path}.{extra[0]}: property not allowed"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problem = validate(item, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    return None


class SchemaValidator(jetplug.Plugin):
    def __init__(self, config):
        config.deny_unknown(["schema"])
        text = config.get("schema")
        try:
            self.schema = json.loads(text) if text is not None else json.loads(json.dumps(AIVO_EVENT))
            check_schema(self.schema)
        except ValueError as e:
            raise ConfigError("schema", str(e)) from None

    def handle(self, msg):
        try:
            event = jetplug.json_payload(msg)
        except jetplug.PayloadError as e:
            return term(e)
        problem = validate(event, self.schema)
        return term(f"schema: {problem}") if problem else ack()


Handler = jetplug.export(SchemaValidator)
