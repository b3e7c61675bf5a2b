"""A small validator for the subset of JSON Schema docs/report.schema.json uses (type, enum, required,
properties, items, $ref, allOf) — enough to hold the reports to their documented shape without a dependency.

Stricter than JSON Schema in one way: an object may hold only the properties its schema (with its ``allOf``
parts) names, so a field added to a report without documenting it in the schema fails the tests. Readers of the
reports must still accept unknown fields (the schema's ``$comment``): fields are added within a version.
"""

import json
from pathlib import Path

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())
_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float), "null": type(None),
          "boolean": bool}


def _resolve(schema: dict) -> dict:
    return SCHEMA["definitions"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema


def _named(schema: dict) -> set[str]:
    """The properties an object may hold: those of the schema and of its ``allOf`` parts."""
    schema = _resolve(schema)
    return set(schema.get("properties", {})).union(*(_named(part) for part in schema.get("allOf", [])))


def validate(value, schema: dict, path: str = "$", closed: bool = True) -> None:
    """``closed``: the object may hold only the properties named (False for an ``allOf`` part, which names some)."""
    if "$ref" in schema:
        validate(value, _resolve(schema), path, closed)
    for part in schema.get("allOf", []):
        validate(value, part, path, closed=False)
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
        if closed and "$ref" not in schema and ("properties" in schema or "allOf" in schema):
            unknown = set(value) - _named(schema)
            assert not unknown, f"{path}: fields the schema does not document: {sorted(unknown)}"
    if isinstance(value, list) and "items" in schema:
        for k, item in enumerate(value):
            validate(item, schema["items"], f"{path}[{k}]")


def validate_report(report: dict) -> None:
    validate(report, SCHEMA["definitions"][report["kind"]])
