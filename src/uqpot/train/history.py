"""``history.csv`` (one line per epoch, mean over members) and ``history_members.csv`` (one line per
epoch and member).

The files are appended to epoch by epoch, and rewritten from the checkpoint's history whenever a training
(re)starts: lines of epochs after the last checkpoint (a kill between the history line and the checkpoint)
or of a run restarted from scratch are dropped, so no epoch ever appears twice.
"""

from __future__ import annotations

from pathlib import Path

from ..core.provenance import write_text

HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_energy_mae", "val_forces_mae", "seconds")
MEMBER_COLUMNS = ("epoch", "member", "lr", "val_loss", "val_energy_mae", "val_forces_mae")


def format_row(row: dict) -> str:
    return ",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in HISTORY_COLUMNS)


def rewrite_history(hist_path: Path, mem_path: Path | None, history: list[dict], epoch: int) -> None:
    """``history.csv`` from ``history`` (the checkpoint's rows); ``history_members.csv`` (when
    ``mem_path``) cut to the epochs up to ``epoch``."""
    write_text(hist_path, "\n".join([",".join(HISTORY_COLUMNS)] + [format_row(r) for r in history]) + "\n")
    if mem_path is None:
        return
    kept = [",".join(MEMBER_COLUMNS)]
    if mem_path.is_file():
        for line in mem_path.read_text().splitlines()[1:]:
            head = line.split(",", 1)[0]
            if head.isdigit() and int(head) <= epoch:
                kept.append(line)
    write_text(mem_path, "\n".join(kept) + "\n")
