"""Work saved to disk so that a long computation resumes: folders claimed by a manifest,
files written whole or not at all, inputs recognised by a fingerprint of their bytes."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def fingerprint(x: torch.Tensor | np.ndarray) -> str:
    """A short hash of a tensor's (or array's) bytes: its values in its dtype."""
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def claim(folder: Path, manifest: dict[str, object]) -> None:
    """Create ``folder`` for the computation ``manifest`` describes, or check that it already
    holds that one (a ValueError names what differs).  Safe when several processes claim
    one folder at once: the first manifest written is the one every process checks."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.json"
    if not path.exists():
        partial = _partial(path)
        partial.write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.link(partial, path)  # whole, and only if no other process got there first
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: a rename, whole but not exclusive
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    found = json.loads(path.read_text())
    differ = [k for k in {**found, **manifest} if found.get(k) != manifest.get(k)]
    if differ:
        raise ValueError(
            f"{str(folder)!r} holds the saved work of a different computation "
            f"({', '.join(differ)} differ); use another folder, or delete this one to "
            "start over"
        )


def _partial(path: Path) -> Path:
    """A side file for ``path``, this thread's own (two may write one path at once)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")


def _whole(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a side file, then rename it over ``path``: whole or absent."""
    partial = _partial(path)
    write(partial)
    os.replace(partial, path)


def save(value: object, path: Path) -> None:
    """``torch.save`` of ``value`` to ``path``, whole or not at all."""
    _whole(path, lambda partial: torch.save(value, partial))


def save_text(text: str, path: Path) -> None:
    """``text`` to ``path``, whole or not at all."""
    _whole(path, lambda partial: partial.write_text(text))
