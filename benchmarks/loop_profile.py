"""Where a loop's time goes: seconds per part (training, test and calibration, MD stability, NEB, attack,
labels, the rest) for every generation and method of a finished loop, from the records each step writes.

    python benchmarks/loop_profile.py runs/ammonia/seed0
    python benchmarks/loop_profile.py runs/ammonia/seed0 --json profile.json

Sources: ``train/summary.json`` (``training.wall_seconds``), ``md/summary.json`` (``wall_time_s``),
``neb.json`` and ``attack/attack.json`` (``seconds``), ``attack/label.json`` (``seconds``: the oracle).  A
step's whole wall time is the span between the first file it writes (``train/train.extxyz``) and the last
(the labels, or for the last generation the NEB, MD or training record); "other" is that span less the
parts (test predictions, calibration, post-hoc fits, file writing).  The span is only meaningful when the
loop ran its steps one after another (``--executor none``); on an executor the steps overlap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PARTS = ("train", "md", "neb", "attack", "label")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def step_profile(d: Path) -> dict | None:
    """Seconds per part of one generation and method (``d`` = ``gen{g}/{method}``), or None if it has none."""
    first = d / "train" / "train.extxyz"
    if not first.is_file():
        return None
    parts = {
        "train": _read(d / "train" / "summary.json").get("training", {}).get("wall_seconds"),
        "md": _read(d / "md" / "summary.json").get("wall_time_s"),
        "neb": _read(d / "neb.json").get("seconds"),
        "attack": _read(d / "attack" / "attack.json").get("seconds"),
        "label": _read(d / "attack" / "label.json").get("seconds"),
    }
    parts = {k: float(v) for k, v in parts.items() if v is not None}
    ends = [p for p in (d / "attack" / "label.json", d / "attack" / "attack.json", d / "neb.json",
                        d / "md" / "summary.json", d / "train" / "summary.json") if p.is_file()]
    span = max(p.stat().st_mtime for p in ends) - first.stat().st_mtime
    return {**parts, "span": span, "other": max(0.0, span - sum(parts.values()))}


def loop_profile(loop_dir: Path) -> dict:
    """``{"steps": {"gen{g}/{method}": {part: s}}, "total": {part: s}}`` of a loop's output directory."""
    steps = {}
    for d in sorted(Path(loop_dir).glob("gen*/*")):
        if d.is_dir() and d.name != "backbone":
            prof = step_profile(d)
            if prof is not None:
                steps[f"{d.parent.name}/{d.name}"] = prof
    total = {k: sum(s.get(k, 0.0) for s in steps.values()) for k in (*PARTS, "other", "span")}
    return {"steps": steps, "total": total}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loop", type=Path, help="a loop's output directory (for a study: OUT/seed{s})")
    ap.add_argument("--json", type=Path, default=None, help="also write the profile here")
    args = ap.parse_args(argv)
    prof = loop_profile(args.loop)
    cols = (*PARTS, "other", "span")
    print(f"{'step':<22}" + "".join(f"{c:>9}" for c in cols) + "   (seconds)")
    for name, s in prof["steps"].items():
        print(f"{name:<22}" + "".join(f"{s.get(c, 0.0):9.1f}" for c in cols))
    tot = prof["total"]
    print(f"{'total':<22}" + "".join(f"{tot[c]:9.1f}" for c in cols))
    if tot["span"] > 0:
        print(f"{'share of the span':<22}" + "".join(f"{tot[c] / tot['span']:9.0%}" for c in cols))
    if args.json:
        args.json.write_text(json.dumps(prof, indent=1))
    return prof


if __name__ == "__main__":
    main()
