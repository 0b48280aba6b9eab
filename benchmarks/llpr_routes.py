"""Cost of LLPR's exact force variance by its two routes: reverse mode (one vector-Jacobian product per
last-layer direction, d of them) and forward mode (one Jacobian-vector product per atom slot and component,
3·n_max of them; :func:`uqpot.nn.response.structure_jacobian`), against one plain PaiNN (energy and forces),
measured in one run, alternating the models.

    python benchmarks/llpr_routes.py --data PATH/ammonia_public.extxyz --data PATH/rmd17_ethanol_800.extxyz \
        [--batch 100] [--rounds 5] [--threads 1]

The paper's PaiNN (128 features, 3 interactions, readout 128 → 64 → 1: d = 65 directions) with random
weights (the cost does not depend on training), the LLPR fitted on 60 structures (α, ς on 20 more), and the
inference (energy, forces, U) of the next ``--batch`` structures.  Reported per data set: seconds per
inference (min over rounds), the ratios to the plain PaiNN, and the largest relative difference of U between
the routes (the same values to float tolerance).  Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from uqpot.core import fields as F

SPEC = {"features": 128, "interactions": 3, "rbf": 20, "cutoff": 5.0, "activation": "ssp", "readout_hidden": 64}


def one(path: str, batch_size: int, rounds: int) -> dict:
    from uqpot.data.batch import collate
    from uqpot.data.io import read_structures
    from uqpot.nn.potential import Potential
    from uqpot.uq import LLPR

    data = read_structures(path)
    train, val, test = data[:60], data[60:80], data[80:80 + batch_size]
    hp = dict(SPEC, members=1, seeds=[0])
    llpr = LLPR(potential=hp)
    llpr.fit_reference(train)
    llpr.fit_posthoc(train, val, 20)
    llpr.eval()
    plain = Potential(**hp)
    plain.fit_reference(train)
    plain.eval()
    b = collate(list(test), cutoff=SPEC["cutoff"])
    n_max = int(torch.bincount(b.batch).max())

    def run(route):
        if route == "plain":
            return plain(b, compute_forces=True)
        llpr.jacobian = route
        return llpr(b, create_graph=False)

    u = {r: run(r)[F.UNCERTAINTY].double() for r in ("reverse", "forward")}
    times = {r: [] for r in ("plain", "reverse", "forward")}
    for k in range(rounds + 1):  # round 0 warms up and is not counted
        for r in times:
            t0 = time.perf_counter()
            run(r)
            if k:
                times[r].append(time.perf_counter() - t0)
    best = {r: min(v) for r, v in times.items()}
    return {"data": path, "structures": len(test), "n_max": n_max, "directions": llpr.dim,
            "tangents_forward": 3 * n_max, "auto_takes": "forward" if 3 * n_max < llpr.dim else "reverse",
            "seconds": {r: round(v, 4) for r, v in best.items()},
            "reverse_vs_plain": best["reverse"] / best["plain"], "forward_vs_plain": best["forward"] / best["plain"],
            "reverse_over_forward": best["reverse"] / best["forward"],
            "max_rel_diff_U": float(((u["forward"] - u["reverse"]).abs() / u["reverse"].abs()).max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    print(f"{'data':<32} {'n_max':>5} {'d':>3} {'plain s':>8} {'reverse s':>9} {'forward s':>9} "
          f"{'rev/plain':>9} {'fwd/plain':>9} {'rev/fwd':>7} {'max rel dU':>10}")
    rows = []
    for path in a.data:
        r = one(path, a.batch, a.rounds)
        rows.append(r)
        s = r["seconds"]
        print(f"{path.rsplit('/', 1)[-1]:<32} {r['n_max']:>5} {r['directions']:>3} {s['plain']:>8.4f} "
              f"{s['reverse']:>9.4f} {s['forward']:>9.4f} {r['reverse_vs_plain']:>9.2f} {r['forward_vs_plain']:>9.2f} "
              f"{r['reverse_over_forward']:>7.2f} {r['max_rel_diff_U']:>10.1e}")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
