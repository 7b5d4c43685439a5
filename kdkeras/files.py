"""Files every part of kdkeras writes: JSON results, manifests and progress records.

No TensorFlow here, so reports and analysis read and write without it.
"""

from __future__ import annotations

import json
import os

import numpy as np


def _to_json(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str, payload: dict, atomic: bool = False) -> str:
    """Write `payload` as indented JSON (NumPy scalars and arrays converted);
    `atomic` writes a synced temporary file and renames it, so a crash never
    leaves half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    target = path + ".partial" if atomic else path
    with open(target, "w") as f:
        json.dump(payload, f, indent=2, default=_to_json)
        if atomic:
            f.flush()
            os.fsync(f.fileno())
    if atomic:
        os.replace(target, path)
    return path
