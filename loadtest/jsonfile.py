"""Result files: strict JSON (NaN and infinities become null), indented, parents created."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by None, recursively."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Writes ``data`` to ``path`` as strict, indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(data), indent=2, allow_nan=False) + "\n")
