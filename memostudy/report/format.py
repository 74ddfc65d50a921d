"""How values are written into reports: table cells and JSON files (one place for every report)."""

from __future__ import annotations

from typing import Any

import numpy as np


def fmt(value: Any, digits: int = 4) -> str:
    """A value as table-cell text: floats with ``digits`` significant digits, lists and tuples item by
    item in brackets, None as an empty cell, anything else as ``str``."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(x, digits) for x in value) + "]"
    return str(value)


def json_default(o: Any) -> Any:
    """``default=`` for :func:`json.dumps`: numpy scalars and arrays as plain numbers and lists, anything
    else (paths ...) as its text."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)
