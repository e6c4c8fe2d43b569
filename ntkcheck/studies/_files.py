"""Result tables on disk: read whole, written whole (an interrupted run keeps the last file)."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path


def read_rows(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, fields: Sequence[str], rows: Iterable[dict[str, object]]) -> None:
    """Write the CSV to a side file, then rename it over ``path``: whole or not at all."""
    partial = path.with_suffix(".partial")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)
