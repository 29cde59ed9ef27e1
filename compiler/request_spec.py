"""The request protocol and sampling pipeline both engines run (REQUESTS.md), read from
request_spec.json; web/src/request_spec.ts is this module's twin and reads a build-time copy.

Besides loading the file, this module formats the spec's error texts the way the TypeScript
engine does, so one error reads the same in both: values are written as JSON, and numbers as
JavaScript's `String(number)` writes them (Python's repr differs: `1e-07`, `3.0`).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

SPEC: dict[str, Any] = json.loads(Path(__file__).with_name("request_spec.json").read_text(encoding="utf-8"))
FIELDS: dict[str, dict[str, Any]] = SPEC["fields"]
ERRORS: dict[str, dict[str, Any]] = SPEC["errors"]
SAMPLING: dict[str, Any] = SPEC["sampling"]


def js_number(value: float | int) -> str:
    """`value` as JavaScript's Number::toString writes it (shortest round-trip digits)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        value = float(value) if abs(value) >= 2**53 else value
        if isinstance(value, int):
            return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as JavaScript's algorithm does; only the
    # layout (where the exponent form starts, how it is written) differs.
    digits_tuple = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digits_tuple.digits))
    k = len(digits)
    n = k + int(digits_tuple.exponent)  # the decimal point sits after n digits
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    exp = n - 1
    mantissa = digits[0] + ("." + digits[1:] if k > 1 else "")
    return f"{sign}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp)}"


def show(value: Any) -> str:
    """`value` as JSON.stringify writes it (compact; absent is null), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "null"  # as JSON.stringify writes NaN and the infinities
    if isinstance(value, (bool, int, float)):
        return js_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + show(v) for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def type_name(value: Any) -> str:
    """The JSON type of `value` as error messages name it; an integral number is an integer
    (JSON has one number type, and JavaScript cannot tell 3.0 from 3)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or isinstance(value, float) and value.is_integer():
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def format_message(template: str, values: Mapping[str, Any]) -> str:
    """Fill `{name}` placeholders; numbers are written as JavaScript writes them."""
    out = template
    for key, value in values.items():
        text = js_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
        out = out.replace("{" + key + "}", text)
    return out


def error_text(name: str, values: Mapping[str, Any]) -> tuple[str, str | None]:
    """(message, code) of the spec's error `name`."""
    entry = ERRORS[name]
    return format_message(entry["message"], values), entry.get("code")


def endpoint_fields(kind: str) -> list[tuple[str, dict[str, Any]]]:
    """The fields `kind` ("chat" or "completion") accepts, in checking order."""
    return [(name, f) for name, f in FIELDS.items() if kind in f["endpoints"]]


def field_type(field: Mapping[str, Any], kind: str) -> str:
    t = field["type"]
    return t[kind] if isinstance(t, Mapping) else t


def field_default(name: str, kind: str) -> Any:
    d = FIELDS[name].get("default")
    return d.get(kind) if isinstance(d, Mapping) else d


def range_rule(type_: str, lo: Any, hi: Any, lo_open: bool) -> str:
    """The {rule} text of out_of_range for this type and bounds."""
    rules = SPEC["range_rules"]
    if type_ == "integer":
        key = "integer_both" if lo is not None and hi is not None else ("integer_min" if lo is not None else "integer_max")
    elif hi is not None:
        key = "number_open" if lo_open else "number_closed"
    else:
        key = "number_min_open" if lo_open else "number_min"
    return format_message(rules[key], {"min": lo, "max": hi})
