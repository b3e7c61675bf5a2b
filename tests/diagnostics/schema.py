"""A small validator for the subset of JSON Schema docs/report.schema.json uses (type, enum, required,
properties, items, $ref, allOf) — enough to hold the reports to their documented shape without a dependency."""

import json
from pathlib import Path

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None),
          "boolean": bool}


def validate(value, schema: dict, path: str = "$") -> None:
    if "$ref" in schema:
        validate(value, SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]], path)
    for part in schema.get("allOf", []):
        validate(value, part, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(isinstance(value, _TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                   for t in types), f"{path}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            assert key in value, f"{path}: missing {key}"
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                validate(value[key], sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{k}]")


def validate_report(report: dict) -> None:
    validate(report, SCHEMA["definitions"][report["kind"]])
