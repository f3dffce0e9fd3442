"""One way to read a metadata file: parse it, then check its shape against a small schema, before any work starts.

Every JSON (or JSON-like) structure the project reads from disk (a shard ``manifest.json``, a ``save_to_disk``
``state.json``, the Hugging Face features in a parquet schema, the converter's resume state, an ONNX file's
metadata, ...) goes through ``load_json`` / ``parse_json`` and ``check``. A mismatch is one UserError that names the
file, the field and what was expected, followed by the reader's fix::

    error: data/manifest.json: field 'files[3].images' is -5, expected an integer from 0 to 1000000000000; ...

A schema is plain data: a Python type (``str``, ``int``, ``float``, ``bool``, ``dict``, ``list``), ``Int(low,
high)``, ``Text()``, ``Names()`` (distinct class names), ``One(a, b, ...)`` (a fixed choice), ``[item]`` (a list of
items) or ``{"key": schema, "key?": schema}`` (an object; ``?`` marks an optional key, other keys are ignored).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from common.errors import UserError

MAX_COUNT = 10**12  # sample counts and sizes beyond this are damage, not data


@dataclass(frozen=True)
class Int:
    """A whole number (not a bool) in [low, high]."""

    low: int = 0
    high: int = MAX_COUNT

    def describe(self) -> str:
        return f"an integer from {self.low} to {self.high}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Text:
    """A string, non-empty unless ``empty``."""

    empty: bool = False

    def describe(self) -> str:
        return "a string" if self.empty else "a non-empty string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and (self.empty or bool(value))


@dataclass(frozen=True)
class Dim:
    """A tensor dimension as export.py records it: a size from 0 to 10**9, or a name for a dynamic one ("batch")."""

    def describe(self) -> str:
        return "a size from 0 to 1000000000 or a dimension name"

    def accepts(self, value: Any) -> bool:
        return Int(0, 10**9).accepts(value) or Text().accepts(value)


@dataclass(frozen=True)
class Names:
    """Class names: a non-empty list of distinct non-empty strings (a repeated name would merge two classes)."""

    def describe(self) -> str:
        return "a non-empty list of distinct, non-empty class names"

    def accepts(self, value: Any) -> bool:
        return (isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) and v for v in value)
                and len(set(value)) == len(value))


class One:
    """One of a few fixed values."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def describe(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)


_TYPES = {str: "a string", int: "an integer", float: "a finite number", bool: "true or false", dict: "an object",
          list: "a list"}


def describe(schema: Any) -> str:
    """What ``schema`` accepts, in words."""
    if isinstance(schema, list):
        return f"a list of {describe(schema[0])}s" if schema else "a list"
    if isinstance(schema, dict):
        return "an object with " + ", ".join(repr(k.rstrip("?")) for k in schema) if schema else "an object"
    if isinstance(schema, type):
        return _TYPES.get(schema, schema.__name__)
    return schema.describe()


def _accepts_type(schema: type, value: Any) -> bool:
    if schema is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if schema is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, schema)


def _problem(value: Any, schema: Any, field: str) -> tuple[str, Any, Any] | None:
    """The first ``(field, value, schema)`` that does not fit, depth first, or None."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            return field, value, schema
        for i, item in enumerate(value if schema else ()):
            found = _problem(item, schema[0], f"{field}[{i}]")
            if found:
                return found
        return None
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return field, value, schema
        for key, sub in schema.items():
            name = key.rstrip("?")
            path = f"{field}.{name}" if field else name
            if name not in value:
                if key.endswith("?"):
                    continue
                return path, _MISSING, sub
            found = _problem(value[name], sub, path)
            if found:
                return found
        return None
    ok = _accepts_type(schema, value) if isinstance(schema, type) else schema.accepts(value)
    return None if ok else (field, value, schema)


class _Missing:
    def __repr__(self) -> str:
        return "missing"


_MISSING = _Missing()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def check(value: Any, schema: Any, where: str, fix: str) -> Any:
    """``value`` when it fits ``schema``, else a UserError: ``WHERE: field F is V, expected E; FIX.``"""
    found = _problem(value, schema, "")
    if found is None:
        return value
    field, got, want = found
    what = f"field {field!r}" if field else "its content"
    raise UserError(f"{where}: {what} is {_shown(got)}, expected {describe(want)}; {fix}.")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str | bytes, where: str, fix: str) -> Any:
    """The JSON in ``text`` (strict: no NaN or Infinity); anything else is one UserError naming ``where``."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise UserError(f"{where} is not valid JSON ({reason}); {fix}.") from None


def load_json(path: str, fix: str, schema: Any = None) -> Any:
    """The JSON file at ``path``, checked against ``schema`` when given; an unreadable file, bad JSON or a shape
    other than ``schema`` is one UserError naming the file (and the field) and ending in ``fix``."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}); {fix}.") from None
    value = parse_json(text, path, fix)
    return value if schema is None else check(value, schema, path, fix)


def class_names(names: Any, where: str, fix: str) -> list[str]:
    """``names`` as a list of distinct class names (``Names``), or a UserError that names the repeated one."""
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise UserError(f"{where} names the class {name!r} twice, which would merge two classes into "
                                f"one; {fix}.")
            seen.add(name)
    return check(names, Names(), where, fix)
