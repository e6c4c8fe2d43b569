"""Table 1 as Markdown and as a figure, ours beside the paper's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .table1 import COLUMNS, DEPTHS, PAPER, fixed_first_last

CAVEAT = (
    "Data: `cifar10-jpeg` is the JPEG re-encoding of CIFAR-10 in `../shared/data` (mean "
    "absolute pixel difference 5.8/255 from the original images), so accuracies can differ "
    "from the paper's by that re-encoding; `cifar10-exact-subset` has exact pixels but only "
    "5,085 training and 1,017 test images (not the official first ones); "
    "`cifar10-exact-subset-jpeg` is that subset as the JPEG set has it."
)


def _by_cell(rows: Sequence[dict[str, object]]) -> dict[tuple[str, int], dict[str, object]]:
    return {(str(r["column"]), int(str(r["depth"]))): r for r in rows}


def write_markdown(rows: Sequence[dict[str, object]], path: Path) -> None:
    """One line per depth; per column: ours, the paper's, and the difference (points)."""
    cells = _by_cell(rows)
    columns = [c for c in COLUMNS if any(k[0] == c for k in cells)]
    depths = sorted({d for _, d in cells})
    head = "| depth | " + " | ".join(f"{c} ours | paper | delta" for c in columns) + " |"
    lines = ["# Table 1, reproduced: CIFAR-10 test accuracy (%)", "", head,
             "|---|" + "---|---|---|" * len(columns)]
    for depth in depths:
        entries = []
        for c in columns:
            r = cells.get((c, depth))
            if r is None:
                entries.append("- | - | -")
                continue
            paper = PAPER[c].get(depth)
            ours = float(str(r["accuracy"]))
            if paper is None:  # a depth the paper did not run
                entries.append(f"{ours:.2f} | - | -")
            else:
                entries.append(f"{ours:.2f} | {paper} | {ours - paper:+.2f}")
        lines.append(f"| {depth} | " + " | ".join(entries) + " |")
    lines += ["", "Per column: " + "; ".join(
        f"{c}: {r['n_train']} train / {r['n_test']} test images, {r['data']}, first and last "
        f"layer {'fixed' if fixed_first_last(r) else 'trained'}, {r['device']}"
        for c in columns for r in [next(r for k, r in cells.items() if k[0] == c)]) + ".",
        "", CAVEAT, ""]
    path.write_text("\n".join(lines))


def write_figure(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Accuracy against depth: ours (solid, filled) and the paper's (dashed, open)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _by_cell(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, column in enumerate(c for c in COLUMNS if any(k[0] == c for k in cells)):
        color = f"C{i}"
        depths = sorted(d for c, d in cells if c == column)
        ours = [float(str(cells[column, d]["accuracy"])) for d in depths]
        ax.plot(depths, ours, "o-", color=color, label=f"{column} (ours)")
        paper = sorted(PAPER[column].items())
        ax.plot([d for d, _ in paper], [a for _, a in paper], "o--", color=color,
                markerfacecolor="none", alpha=0.7, label=f"{column} (paper)")
    ax.set_xscale("log")
    ax.set_xticks(sorted({d for _, d in cells} | set(DEPTHS)))  # ours and the paper's
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("depth (weight layers, incl. the readout)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    ax.set_title("CNTK kernel regression: ours vs. the paper's Table 1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
