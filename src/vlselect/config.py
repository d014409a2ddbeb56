"""Configuration: load YAML, validate against the JSON schema, fill defaults.

The schema (workflow/schemas/config.schema.yaml, Draft 2020-12) is the single
description of every key. Validation fills defaults and rejects unknown keys
with a message that names the key and the keys allowed at that place, because
a mistyped key silently ignored is how a run spends a day on the wrong setting.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration does not match the schema."""


def _extend_with_default(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_default(jsonschema.Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` in place (filling defaults) and return it; raise ConfigError on the first problems."""
    schema = schema or load_schema()
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(_describe(e) for e in errors))
    return config


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    return validate_config(yaml.safe_load(Path(path).read_text()) or {})


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"  unknown key(s) {', '.join(repr(k) for k in unknown)} under {where}; allowed keys: {', '.join(allowed)}"
    return f"  {where}: {error.message}"
