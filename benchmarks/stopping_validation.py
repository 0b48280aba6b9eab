"""Validates the stopping rule (``loop: {until: ...}``, :mod:`uqpot.sample.stopping`) on a finished loop:
for a generation and method, a random subsample of its exploration frames (``GEN/METHOD/until/frames.extxyz``)
is labelled by the loop's own oracle through its label store (a frame labelled before is not computed again),
and the predicted fraction of frames whose RMS force error exceeds the tolerance (from the calibration) is
compared with the true one (the model's forces against the oracle's), each with its 95% interval over the
trajectories (:func:`uqpot.sample.stopping.validate_fraction`).

    python benchmarks/stopping_validation.py runs/loop --generation 1 --method ensemble --labels 40
    python benchmarks/stopping_validation.py runs/loop --generation 1 --method ensemble --tolerance 2.0

``--tolerance`` (default: the loop's ``until.tolerance``) may differ from the loop's: the frames' P(error > τ)
are recomputed from their stored σ_F.  Writes ``GEN/METHOD/until/validation[_tol<τ>].json`` and prints the
two fractions with their intervals.  Cost: one oracle call per new frame (PySCF on ammonia: ~3 s each on
one core).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from uqpot.core.provenance import write_json
from uqpot.loop.active_learning import ActiveLearning
from uqpot.loop.config import load_loop_config
from uqpot.loop.stopping import read_exploration
from uqpot.sample.stopping import exceed_probability, validate_fraction


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("loop", type=Path, help="the loop's output directory (with config.yaml)")
    ap.add_argument("--generation", type=int, default=1)
    ap.add_argument("--method", default=None, help="default: the loop's first method")
    ap.add_argument("--labels", type=int, default=40, help="frames to label (a seeded random subsample)")
    ap.add_argument("--tolerance", type=float, default=None, help="kcal/mol/Å; default: the loop's until.tolerance")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = load_loop_config(args.loop / "config.yaml", {"out": str(args.loop)})
    al = ActiveLearning(cfg)
    method = args.method or cfg.methods[0]
    d = al.gen_dir(args.generation, method)
    ex = read_exploration(d)
    tol = args.tolerance if args.tolerance is not None else (cfg.until.tolerance if cfg.until else None)
    if tol is None:
        raise SystemExit("no tolerance: the loop has no 'until' section, give --tolerance")
    if cfg.until is None or tol != cfg.until.tolerance:  # the frames' P(error > τ) at this tolerance
        for t in ex.trajectories:
            t["p"] = exceed_probability(t["sigma"], 3 * len(t["start"].numbers), tol)
    res = validate_fraction(al.model(args.generation, method), ex, al.oracle, al.store, tolerance=tol,
                            n_labels=args.labels, seed=args.seed, provenance={"generation": args.generation,
                                                                              "uq_method": method})
    res.update({"generation": args.generation, "method": method, "seed": args.seed,
                "oracle_calls": al.oracle.calls})
    name = "validation.json" if cfg.until and tol == cfg.until.tolerance else f"validation_tol{tol:g}.json"
    write_json(d / "until" / name, res)
    p, t = res["predicted"], res["true"]
    print(f"{args.loop} gen {args.generation} {method}: tolerance {tol:g} kcal/mol/Å, {res['n_labelled']} frames "
          f"labelled ({res['oracle_calls']} oracle calls, {res['from_store']} from the store) of "
          f"{res['all_frames_predicted']['n_frames']} in {res['n_trajectories']} trajectories")
    print(f"  predicted fraction above tolerance {p['fraction']:.3f} [{p['low']:.3f}, {p['high']:.3f}]")
    print(f"  true fraction above tolerance      {t['fraction']:.3f} [{t['low']:.3f}, {t['high']:.3f}] ({t['interval']})")
    rms = np.array([r["rms_error"] for r in res["frames"]])
    sig = np.array([r["sigma_F"] for r in res["frames"]])
    if len(rms) > 1:
        print(f"  frames: mean RMS force error {rms.mean():.3f}, mean calibrated σ_F {sig.mean():.3f} kcal/mol/Å")
    print(f"  wrote {d / 'until' / name}")
    return json.loads(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
