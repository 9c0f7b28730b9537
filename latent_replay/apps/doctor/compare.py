"""The doctor's arrays saved and compared with another machine's: every latent, loss, logit and trained
array of the same checks, each within a tolerance relative to its own largest value."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from ..common import UserError
from .check import relative_difference

SETTINGS = "__settings__"  # the checks' settings, as JSON text, beside the arrays


def save_arrays(path: Path, arrays: Dict[str, np.ndarray], settings: Dict[str, Any]) -> None:
    """`arrays` and the settings that made them, as one .npz written atomically."""
    from ...atomic import write_bytes_atomic

    buffer = io.BytesIO()
    np.savez(buffer, **arrays, **{SETTINGS: np.array(json.dumps(settings, sort_keys=True))})
    write_bytes_atomic(path, buffer.getvalue())


def load_arrays(path: Path, option: str = "--compare") -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(settings, arrays) of a file `save_arrays` wrote; a UserError naming `option` otherwise."""
    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise UserError(f"{option} {path}: no such file") from None
    except Exception as e:  # not an .npz, truncated, damaged
        raise UserError(f"{option} {path}: not an arrays file of `latent-replay doctor --arrays` ({e})") from None
    if SETTINGS not in arrays:
        raise UserError(f"{option} {path}: not an arrays file of `latent-replay doctor --arrays` (no settings)")
    return json.loads(str(arrays.pop(SETTINGS))), arrays


def compare(mine: Dict[str, np.ndarray], reference: Dict[str, np.ndarray], rtol: float) -> List[Dict[str, Any]]:
    """One row per array of `reference`: its difference from `mine` relative to the reference's largest
    value, and whether that is within `rtol`; an array missing or of another shape fails its row."""
    rows = []
    for name in sorted(reference):
        ref = reference[name]
        if name not in mine:
            rows.append({"array": name, "ok": False, "problem": "missing here"})
        elif mine[name].shape != ref.shape:
            rows.append({"array": name, "ok": False, "problem": f"shape {mine[name].shape} here, {ref.shape} there"})
        else:
            diff = relative_difference(mine[name], ref)
            rows.append({"array": name, "rel_diff": diff, "ok": diff <= rtol})
    return rows


def summary(rows: List[Dict[str, Any]], rtol: float) -> List[str]:
    """Per layer, the largest difference and the array it is in; then every row that failed."""
    lines = []
    layers: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        if "rel_diff" in row:
            layer = row["array"].split("|")[0]
            if layer not in layers or row["rel_diff"] > layers[layer]["rel_diff"]:
                layers[layer] = row
    for layer, row in layers.items():
        lines.append(f"  {layer:<10} largest difference {row['rel_diff']:.2e} of the values' scale "
                     f"({row['array'].split('|', 1)[1]}; tolerance {rtol:g})")
    for row in rows:
        if not row["ok"]:
            what = row.get("problem") or f"differs by {row['rel_diff']:.2e} (tolerance {rtol:g})"
            lines.append(f"  FAILED {row['array']}: {what}")
    return lines
