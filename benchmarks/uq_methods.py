"""Train every UQ method on one data set and print the paper's metrics side by side.

In-domain (random split, e.g. rMD17 ethanol 400 / 100 / 300):

    python benchmarks/uq_methods.py --data ETHANOL.extxyz --split 400,100,300 --out runs/uq_ethanol

Out of domain (train on structures below an energy threshold, relative to the lowest one; test above it;
validation = 20% of the low-energy structures), e.g. ammonia below 5 kcal/mol:

    python benchmarks/uq_methods.py --data AMMONIA.extxyz --ood 5.0 --out runs/uq_ammonia

Options: --methods ensemble,mve,evidential,gmm[,llpr,shallow_ensemble,descriptor_distance,gmm+sn0.9,
llpr+sn0.9,partial_ensemble:1]  --seeds 0,1,2  --epochs 300 (``METHOD+snC``: the method on a spectrally
normalised PaiNN, ``model.spectral_norm: C``; ``partial_ensemble:k``: --members members sharing the embedding
and the first k interaction blocks)  --lr 5e-4  --batch 16  --members 5  --heads 8 (shallow ensemble)
--llpr-samples 0 (exact LLPR)  --llpr-variants 8 (rows SPEC_k8: U from 8 posterior samples)  --llpr-atomic
(rows SPEC_atomic: the atomic-energy variance of the same posterior)  --executor none|local  --compile
auto|true|false (train.compile).  Finished jobs are skipped on a rerun; ``--reuse DIR`` reads finished jobs of
an earlier grid with the same data, split and settings instead of training them again; ``--extra-test FILE``
assesses every finished model on a second test set too (e.g. a built 0-100 kcal/mol ammonia set).  The post-hoc
methods (GMM, LLPR, descriptor distance) of one seed and model wrap one plain network, trained once
(``OUT/backbone[+snC]_sS``).

``--cost`` times, in this process and interleaved, a training step (forward, loss, backward; batches of --batch) and the
test-set inference (energy, forces, U; steady state: after one untimed call) of every method's first-seed
model against one plain PaiNN of the same size, and the post-hoc fits (GMM, LLPR, the shallow ensemble's NLL fine-tuning) in plain-epoch
equivalents.  The coverage metrics of every job are recomputed from its model file (calibration and
conformal quantiles refitted on its validation set; model files are only read), so that reused and older
jobs follow the same definition.  Prints a table (mean ± std over seeds),
the gap of every single-model method to the ensemble, and one JSON line per method.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from uqpot.data.io import read_structures
from uqpot.fit.grid import (PAPER_TABLE_S2, TABLE_KEYS, Job, format_table, run_grid,
                                      shares_backbone, table)

KEYS = TABLE_KEYS + ("coverage_68", "conformal_coverage_68", "coverage_95", "conformal_coverage_95")
COVERAGE_KEYS = KEYS[len(TABLE_KEYS):]


def splits(args, n, energies, seed):
    rng = np.random.default_rng(seed)
    if args.ood is not None:
        rel = energies - energies.min()
        low, high = np.nonzero(rel < args.ood)[0], np.nonzero(rel >= args.ood)[0]
        low = rng.permutation(low)
        n_val = int(round(0.2 * len(low)))
        return {"train": np.sort(low[n_val:]), "val": np.sort(low[:n_val]), "test": high}
    a, b, c = (int(x) for x in args.split.split(","))
    perm = rng.permutation(n)
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:a + b]), "test": np.sort(perm[a + b:a + b + c])}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="400,100,300")
    ap.add_argument("--ood", type=float, default=None, help="energy threshold (kcal/mol) for an OOD split")
    ap.add_argument("--methods", default="ensemble,mve,evidential,gmm")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--heads", type=int, default=8, help="shallow-ensemble heads")
    ap.add_argument("--llpr-samples", type=int, default=0, help="LLPR: 0 = exact force variance, K = posterior samples")
    ap.add_argument("--reuse", default=None, help="an earlier grid's output directory: its finished jobs with "
                                                  "the same settings are read instead of trained")
    ap.add_argument("--cost", action="store_true", help="time training steps and inference against one PaiNN")
    ap.add_argument("--llpr-variants", default="", help="K,...: also assess every LLPR job with U from K "
                                                        "posterior samples (row SPEC_kK; same network and fit)")
    ap.add_argument("--llpr-atomic", action="store_true", help="also assess every LLPR job with U from the "
                                                              "atomic-energy variance (row SPEC_atomic; same "
                                                              "network and posterior, one forward pass)")
    ap.add_argument("--extra-test", default=None, help="a second test set (structure file): every finished job's "
                                                      "model is also assessed on it (calibration from its own "
                                                      "validation set), in a table of its own")
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--compile", default="auto", choices=("auto", "true", "false"),
                    help="train.compile of every job (auto: uqpot.train.autocompile's choice)")
    ap.add_argument("--max-hours", type=float, default=None)
    ap.add_argument("--executor", default="none")
    ap.add_argument("--out", required=True)
    ap.add_argument("--molecule", default=None, help="name for the paper's Table S2 column (e.g. ethanol)")
    a = ap.parse_args()

    data = read_structures(a.data)
    idx = splits(a, len(data), data.energies(), a.split_seed)
    jobs, labels = [], {}
    for spec in a.methods.split(","):
        method, _, sn = spec.partition("+sn")
        method, _, shared = method.partition(":")  # partial_ensemble:k shares k interaction blocks
        model = {"spectral_norm": float(sn)} if sn else {}
        for seed in (int(s) for s in a.seeds.split(",")):
            uq = ({"members": a.members} if method == "ensemble" else {"heads": a.heads} if method == "shallow_ensemble"
                  else {"members": a.members, "shared": int(shared or 1)} if method == "partial_ensemble"
                  else {"samples": a.llpr_samples} if method == "llpr" and a.llpr_samples else {})
            train = {"epochs": a.epochs, "lr": a.lr, "batch_size": a.batch, "lr_patience": a.patience,
                     "val_batch_size": 100, "max_hours": a.max_hours}
            if a.compile != "auto":  # absent under auto, so that earlier grids' jobs are still the same job
                train["compile"] = a.compile == "true"
            # the post-hoc methods of one seed and model wrap one plain network, trained once
            backbone = (str(Path(a.out) / f"backbone{'+sn' + sn if sn else ''}_s{seed}")
                        if shares_backbone(method, uq) else None)
            jobs.append(Job(name=f"{spec}-s{seed}", data=str(a.data), indices={k: v.tolist() for k, v in idx.items()},
                            method=method, seed=seed, out=str(Path(a.out) / f"{spec}_s{seed}"), uq=uq, train=train,
                            model=model, backbone=backbone))
            labels[jobs[-1].out] = spec
            if a.reuse and not jobs[-1].done and same_job(Path(a.reuse) / f"{spec}_s{seed}", jobs[-1]):
                jobs[-1].out = str(Path(a.reuse) / f"{spec}_s{seed}")
                labels[jobs[-1].out] = spec
    executor = None
    if a.executor != "none":
        from uqpot.core.executor import get_executor

        executor = get_executor(a.executor)
    results = run_grid(jobs, executor, progress=lambda k, n, j: print(f"[{k}/{n}] {j.name} done", flush=True))
    for job, r in zip(jobs, results):  # rows named by the spec (e.g. gmm+sn0.9), not the bare method
        r["job"] = {**r["job"], "method": labels[job.out]}
    for job, r in zip(jobs, results):
        if "spearman" in r.get("test", {}):  # one conformal definition for every job, old or reused
            r["test"] = {**r["test"], **reassess_coverage(job, data)}
    variants = llpr_variants(a)
    base = list(zip(jobs, results))
    for suffix, change in variants.items():
        for job, r in base:
            if job.method == "llpr" and "spearman" in r.get("test", {}):
                results.append({**r, "job": {**r["job"], "method": f"{r['job']['method']}{suffix}"},
                                "test": assess_model(job, data, change)})
    rows = table(results, keys=KEYS)
    # training cost per epoch relative to one plain PaiNN (the GMM's network is trained with the plain loss)
    per_epoch = {r["method"]: r["wall_seconds"] / max(r["epochs"], 1) for r in rows}
    for r in rows:
        r["cost_per_epoch_vs_one_model"] = per_epoch[r["method"]] / per_epoch["gmm"] if "gmm" in per_epoch else None
    print(f"\n{len(idx['train'])} train / {len(idx['val'])} val / {len(idx['test'])} test; epochs ≤ {a.epochs}, "
          f"lr {a.lr}, batch {a.batch}")
    print(format_table(rows, keys=KEYS))
    by = {r["method"]: r for r in rows}
    if "ensemble" in by:
        print("\ngap to the ensemble (method − ensemble, mean over seeds):")
        for r in rows:
            if r["method"] != "ensemble":
                print(f"  {r['method']:>16s}: " + ", ".join(
                    f"Δ{k} {r[k] - by['ensemble'][k]:+.3f}" for k in ("spearman", "roc_auc_p20", "roc_auc_p50")
                    if r.get(k) is not None and by["ensemble"].get(k) is not None))
    if a.cost:
        costs = cost_table(jobs, data, idx, a, llpr_variants=variants, labels=labels)
        print("\ncost relative to one plain PaiNN (same process, interleaved, min over rounds):")
        print(f"{'method':>16s} | {'train step ×':>12s} | {'inference ×':>11s} | {'post-hoc (plain epochs)':>23s} | "
              f"{'training total ×':>16s}")
        for m, c in costs.items():
            ph = f"{c['posthoc_plain_epochs']:23.1f}" if c.get("posthoc_plain_epochs") is not None else f"{'—':>23s}"
            # whole training (epochs run × step cost + post-hoc) over a plain PaiNN running the same epochs
            epochs = by.get(m, by.get("llpr", {})).get("epochs") or a.epochs
            c["training_total"] = c["train_step"] + (c.get("posthoc_plain_epochs") or 0.0) / epochs
            print(f"{m:>16s} | {c['train_step']:12.2f} | {c['inference']:11.2f} | {ph} | {c['training_total']:16.2f}")
            if m in by:
                by[m]["cost"] = c
    print("\n" + markdown_table(rows, by))
    if a.extra_test:
        extra = read_structures(a.extra_test)
        more = [{**r, "test": assess_model(job, data, other=extra)} for job, r in base if "spearman" in r.get("test", {})]
        more += [{**r, "job": {**r["job"], "method": f"{r['job']['method']}{suffix}"},
                  "test": assess_model(job, data, change, other=extra)}
                 for suffix, change in variants.items() for job, r in base
                 if job.method == "llpr" and "spearman" in r.get("test", {})]
        print(f"\non {a.extra_test} ({len(extra)} structures; the same models, calibrated on their validation sets):")
        print(markdown_table(table(more, keys=KEYS), {}))
    curve = sharing_curve(rows)
    if curve:
        print("\npartially shared ensembles, from sharing nothing to sharing all but the readout:")
        print(curve)
    if a.molecule in PAPER_TABLE_S2:
        print("paper Table S2 ROC-AUC (20th percentile): " +
              ", ".join(f"{m} {v[0]}" for m, v in PAPER_TABLE_S2[a.molecule].items()))
    for r in rows:
        print(json.dumps(r))


def _cell(r: dict, k: str, fmt: str = ".3f") -> str:
    v, s = r.get(k), r.get(k + "_std")
    return "—" if v is None else f"{v:{fmt}} ± {s:{fmt}}" if s is not None else f"{v:{fmt}}"


def markdown_table(rows: list[dict], by: dict) -> str:
    """The table of the closing note: mean ± std over seeds of every metric, and the cost relative to one
    plain PaiNN (training total × and inference ×, from ``--cost``; "—" without it)."""
    head = ("method", "seeds", "force MAE", "Spearman", "AUC20", "miscal. area", "cNLL", "train ×", "inference ×")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = by.get(r["method"], {}).get("cost") or {}
        cost = [f"{c[k]:.2f}" if c.get(k) is not None else "—" for k in ("training_total", "inference")]
        lines.append("| " + " | ".join([r["method"], str(r["n"]), _cell(r, "forces_mae", ".2f"), _cell(r, "spearman"),
                                        _cell(r, "roc_auc_p20"), _cell(r, "miscalibration_area"),
                                        _cell(r, "cnll", ".1f"), *cost]) + " |")
    return "\n".join(lines)


def sharing_curve(rows: list[dict]) -> str:
    """Cost against ranking over the split points: the deep ensemble (shares nothing), ``partial_ensemble:k``
    in order of k, and the shallow ensemble (shares all but the readout, trained on the NLL)."""
    def order(m):
        if m == "ensemble":
            return -1
        if m.startswith("partial_ensemble:") and "+" not in m:
            return int(m.split(":")[1])
        return 99 if m == "shallow_ensemble" else None

    pts = sorted((r for r in rows if order(r["method"]) is not None), key=lambda r: order(r["method"]))
    if not any(r["method"].startswith("partial_ensemble") for r in pts):
        return ""
    lines = ["| shared | train step × | inference × | Spearman | AUC20 | force MAE |", "|---|---|---|---|---|---|"]
    for r in pts:
        c = r.get("cost") or {}
        cost = [f"{c[k]:.2f}" if c.get(k) is not None else "—" for k in ("train_step", "inference")]
        lines.append(f"| {r['method']} | {cost[0]} | {cost[1]} | {_cell(r, 'spearman')} | {_cell(r, 'roc_auc_p20')} "
                     f"| {_cell(r, 'forces_mae', '.2f')} |")
    return "\n".join(lines)


def same_job(old: Path, job: Job) -> bool:
    """Whether ``old`` holds a finished job with the same data, method, seed, split sizes and settings."""
    f = old / "summary.json"
    if not f.is_file():
        return False
    prev = json.loads(f.read_text()).get("job", {})
    if Path(prev.get("data", "")).resolve() != Path(job.data).resolve():
        return False
    return all(prev.get(k) == v for k, v in (("method", job.method), ("seed", job.seed), ("model", job.model),
                                             ("uq", job.uq), ("train", job.train), ("read", job.read),
                                             ("indices", {k: len(v) for k, v in job.indices.items()})))


def _sets(job: Job, data):
    return {k: data.subset(np.asarray(v, dtype=int)) for k, v in job.indices.items()}


def reassess_coverage(job: Job, data) -> dict:
    """Coverage metrics of a finished job (see :func:`assess_model`)."""
    metrics = assess_model(job, data)
    return {k: metrics[k] for k in COVERAGE_KEYS}


def llpr_variants(a) -> dict:
    """{row suffix: model -> model} of the LLPR variants asked for (same network, same fit)."""
    out = {f"_k{K}": (lambda m, K=K: m.with_samples(K)) for K in (int(k) for k in a.llpr_variants.split(",") if k)}
    if a.llpr_atomic:
        out["_atomic"] = lambda m: m.with_output("atomic_energy")
    return out


def assess_model(job: Job, data, change=None, other=None) -> dict:
    """Metrics of a finished job's model (changed by ``change``, e.g. an LLPR variant) on its test set or on
    ``other``: the calibration and the conformal quantiles refitted on its validation set (the model file is
    only read)."""
    import uqpot
    from uqpot.evaluation.evaluate import assess, fit_calibration

    sets = _sets(job, data)
    model = uqpot.load(Path(job.out) / "model.pt")
    model = change(model) if change else model
    metrics, _ = assess(model, sets["test"] if other is None else other, 100,
                        fit_calibration(model, sets["val"], 100))
    return metrics


def cost_table(jobs, data, idx, a, rounds: int = 5, steps: int = 25, llpr_variants=None, labels=None) -> dict:
    """Per method (its first finished job): time of ``steps`` training steps and of the test-set inference
    relative to one plain PaiNN with the same hyper-parameters, interleaved over ``rounds`` (min of each);
    the post-hoc fit (GMM, LLPR) in units of one plain training epoch."""
    import copy
    import time


    import uqpot
    from uqpot.train.config import TrainConfig
    from uqpot.data.batch import iterate_batches
    from uqpot.evaluation.evaluate import predictions
    from uqpot.nn.potential import Potential
    from uqpot.train.stages import run_stage
    from uqpot.evaluation.predict import predict

    first = {}  # per row (the spec: gmm+sn0.9 and partial_ensemble:2 are rows of their own)
    for job in jobs:
        name = (labels or {}).get(job.out, job.method)
        if job.done and name not in first:
            first[name] = job
    if not first:
        return {}
    sets = _sets(next(iter(first.values())), data)
    models = {m: uqpot.load(Path(j.out) / "model.pt") for m, j in first.items()}
    for name in [n for n, m in models.items() if m.method == "llpr"]:
        for suffix, change in (llpr_variants or {}).items():
            models[f"{name}{suffix}"] = change(models[name])
    hp = dict(next(iter(models.values())).potential.hparams, members=1, seeds=[0])
    plain = Potential(**hp)
    plain.fit_reference(sets["train"])
    cfg = TrainConfig(lr=a.lr, batch_size=a.batch, progress=False)
    batches = [b for _, b in iterate_batches(sets["train"], a.batch, plain.cutoff)]
    batches = [batches[k % len(batches)] for k in range(steps)]  # cycled: small training sets have few
    n_epoch_batches = -(-len(sets["train"]) // a.batch)

    def train_time(model):
        model.train()
        loss_fn = model.make_loss(cfg) if hasattr(model, "make_loss") else None
        from uqpot.train.losses import EnergyForceLoss

        loss_fn = loss_fn or EnergyForceLoss(cfg.energy_weight, cfg.forces_weight)
        t0 = time.perf_counter()
        for b in batches:
            loss, _ = loss_fn(model.forward_members(b), b)
            loss.sum().backward()
            model.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        model.eval()
        return dt

    def infer(model):
        if model is plain:
            predict(plain, sets["test"], batch_size=100)
        else:
            predictions(model, sets["test"], 100)

    def infer_time(model):
        # steady state, as in MD or screening, where a frozen model is called many times: one untimed call
        # first, so that what a model computes once per set of weights (the spectral-normalisation factor,
        # recomputed after the training steps timed just before) is not counted as a per-call cost
        infer(model)
        t0 = time.perf_counter()
        infer(model)
        return time.perf_counter() - t0

    t_train = {m: [] for m in ["plain", *models]}
    t_inf = {m: [] for m in ["plain", *models]}
    for r in range(rounds + 1):  # round 0 warms up (allocator, lazy initialisation) and is not counted
        for m, model in [("plain", plain), *models.items()]:
            tt, ti = train_time(model), infer_time(model)
            if r:
                t_train[m].append(tt)
                t_inf[m].append(ti)
    plain_epoch = min(t_train["plain"]) / len(batches) * n_epoch_batches
    out = {}
    for m, model in models.items():
        out[m] = {"train_step": min(t_train[m]) / min(t_train["plain"]),
                  "inference": min(t_inf[m]) / min(t_inf["plain"])}
        if model.posthoc or model.stages(TrainConfig()):  # timed on a copy; the fitted model is not changed
            fresh = copy.deepcopy(model)
            t0 = time.perf_counter()
            for stage in fresh.stages(TrainConfig()):  # the shallow ensemble's NLL fine-tuning
                run_stage(fresh, stage, sets["train"], sets["val"], 100)
            fresh.fit_posthoc(sets["train"], sets["val"], 100)
            out[m]["posthoc_seconds"] = time.perf_counter() - t0
            out[m]["posthoc_plain_epochs"] = out[m]["posthoc_seconds"] / plain_epoch
    return out


if __name__ == "__main__":
    sys.exit(main())
