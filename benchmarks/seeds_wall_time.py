"""Wall time of a loop study against its number of seeds: the README's main command (``uqpot reproduce
ammonia --preset quick``) with 1, 2, 4, ... seeds, each in a fresh output folder, all from one data set.

    python benchmarks/seeds_wall_time.py --data runs/ammonia/data --counts 1,2,4,8 [--executor local] \
        [--replicates auto,separate]

``--data`` is a finished study's data folder (``OUT/data``, with its ``summary.json``): it is copied into
each run's folder so that every count pays for its loop alone, with a fresh label store (the loop's labels
are computed by the oracle every time, as a new user's would be).  Seeds are 0 .. S-1.  Prints one row per
count and mode (wall time, time per seed) and one JSON line.  ``--replicates``: the loop's ``replicates``
setting, each run with a copy of the preset that sets it: ``auto`` trains the seeds' networks of a method in
one stack per generation (:mod:`uqpot.fit.replicates`), ``separate`` one by one; the MD campaigns, NEBs,
attacks and labels run per seed either way (the (seed, method) jobs of a generation spread over the
executor's workers).

The machine's speed is printed beside each row: the run's seconds per oracle label (PySCF on NH3, one thread,
the loop's own labels, from every ``attack/label.json``), a figure uqpot's code does not enter, so wall times
measured on different days can be told apart from a machine that runs faster or slower that day.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def preset_file(preset: str, mode: str, work: Path) -> str:
    """A copy of the ammonia preset ``preset`` (a name or a YAML file) with ``loop.replicates: mode``."""
    src = Path(preset) if Path(preset).is_file() else Path(__file__).parents[1] / "configs" / f"ammonia_{preset}.yaml"
    raw = yaml.safe_load(src.read_text())
    raw.setdefault("loop", {})["replicates"] = mode
    path = work / f"preset_{mode}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def seconds_per_label(out: Path) -> float | None:
    """Seconds per oracle call over the loop's labelling steps of the study in ``out`` (None: none ran)."""
    calls = seconds = 0.0
    for f in out.glob("seed*/gen*/*/attack/label.json"):
        rec = json.loads(f.read_text())
        calls += rec.get("oracle_calls", 0)
        seconds += rec.get("seconds", 0.0)
    return round(seconds / calls, 3) if calls else None


def run_count(data: Path, seeds: int, executor: str, preset: str, work: Path, mode: str = "auto") -> dict:
    out = work / f"{mode}_seeds{seeds}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(data, out / "data")
    cmd = [sys.executable, "-m", "uqpot", "reproduce", "ammonia", "--preset", preset, "--seeds",
           ",".join(str(s) for s in range(seeds)), "--executor", executor, "--out", str(out)]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    with open(out.parent / f"{mode}_seeds{seeds}.log", "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    return {"replicates": mode, "seeds": seeds, "wall_s": round(wall, 1), "per_seed_s": round(wall / seeds, 1), "rc": rc,
            "s_per_label": seconds_per_label(out),
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a finished ammonia study's data folder (OUT/data)")
    ap.add_argument("--counts", default="1,2,4", help="numbers of seeds, comma-separated")
    ap.add_argument("--executor", default="local", help="local (Dask, one worker per core) or none")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--replicates", default="auto,separate", help="the loop's replicates settings to time")
    ap.add_argument("--work", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args(argv)
    if not (args.data / "summary.json").is_file():
        raise SystemExit(f"{args.data}: not a finished data folder (no summary.json)")
    work = args.work or Path(tempfile.mkdtemp(prefix="seeds_wall_time_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = [run_count(args.data, int(c), args.executor, preset_file(args.preset, mode, work), work, mode)
            for mode in args.replicates.split(",") for c in args.counts.split(",")]
    print(f"{'replicates':>10} {'seeds':>6} {'wall (min)':>11} {'per seed (min)':>15} {'s per label':>12}  load before/after")
    for r in rows:
        print(f"{r['replicates']:>10} {r['seeds']:>6} {r['wall_s'] / 60:11.1f} {r['per_seed_s'] / 60:15.1f} "
              f"{r['s_per_label'] or float('nan'):12.3f}  {r['load_before'][0]}/"
              f"{r['load_after'][0]}" + ("" if r["rc"] == 0 else f"  (exit {r['rc']})"))
    print(json.dumps({"executor": args.executor, "preset": args.preset, "rows": rows}))
    return rows


if __name__ == "__main__":
    main()
