"""Work saved to disk so that a long computation resumes: folders claimed by a manifest,
files written whole or not at all, inputs recognised by a fingerprint of their bytes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch


def fingerprint(x: torch.Tensor | np.ndarray) -> str:
    """A short hash of a tensor's (or array's) bytes: its values in its dtype."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def claim(folder: Path, manifest: dict[str, object]) -> None:
    """Create ``folder`` for the computation ``manifest`` describes, or check that it already
    holds that one (a ValueError names what differs)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    if path.exists():
        found = json.loads(path.read_text())
        differ = [k for k in manifest if found.get(k) != manifest[k]]
        if differ:
            raise ValueError(
                f"{str(folder)!r} holds the saved work of a different computation "
                f"({', '.join(differ)} differ); use another folder, or delete this one to "
                "start over"
            )
        return
    path.write_text(json.dumps(manifest, indent=1) + "\n")


def save(value: object, path: Path) -> None:
    """``torch.save`` to a side file, then rename it over ``path``: whole or absent."""
    partial = path.with_suffix(".partial")
    torch.save(value, partial)
    os.replace(partial, path)
