"""Plain-data records read back from files (the dataset's JSON, model configs, the
ONNX metadata): what each field must hold, checked field by field, so that a
wrong type is one line naming the field instead of a TypeError deep inside.
"""
import json
import math


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v):
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_text(v):
    return isinstance(v, str)


def is_names(v):
    """A list of non-empty strings."""
    return isinstance(v, list) and all(isinstance(n, str) and n for n in v)


def is_distinct_names(v):
    return is_names(v) and len(v) > 0 and len(set(v)) == len(v)


def in_range(lo, hi, open_lo=False, open_hi=False):
    """A predicate: a finite number within [lo, hi] (open ends where asked)."""
    def check(v):
        return is_real(v) and (lo < v if open_lo else lo <= v) and (
            v < hi if open_hi else v <= hi)
    return check


def check_fields(d, spec):
    """ValueError naming the first field of `d` whose value does not pass its
    check in `spec` {field: (check, what it must be)}; None passes (not recorded),
    fields spec does not know are left alone."""
    for key, value in d.items():
        if key in spec and value is not None and not spec[key][0](value):
            raise ValueError(f"'{key}' must be {spec[key][1]}, not {shown(value)}")


def shown(value, limit=60):
    """A value as a short JSON-like text for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
