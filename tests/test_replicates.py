"""Replicates as a batch axis (:mod:`uqpot.fit.replicates`): the seeds of a method trained in one stack equal
their separate runs (weights, validation record, test metrics), also when the seeds' training sets differ
in size, as they do after a generation of active learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from uqpot.fit.replicates import Replicate, fit_replicates, why_not_stacked
from uqpot.fit.run import fit_model
from uqpot.nn import modelfile
from uqpot.nn.painn import PaiNNOptions as ModelConfig
from uqpot.train.config import TrainConfig
from uqpot.train.optim import MemberAdam
from uqpot.uq.options import parse_uq

SMALL = dict(features=16, interactions=2, rbf=8, cutoff=4.0, readout_hidden=8)
TRAIN = dict(epochs=4, batch_size=8, lr=2e-3, dtype="float64", progress=False, lr_patience=1)


def _replicates(ammonia, tmp, sizes):
    """One replicate per (seed, training-set size, validation-set size): each its own split of the first 40
    structures; the next 12 are the test set."""
    reps = []
    for seed, n, n_val in sizes:
        perm = np.random.default_rng(seed).permutation(40)
        train, val = ammonia.subset(np.sort(perm[:n])), ammonia.subset(np.sort(perm[n:n + n_val]))
        reps.append(Replicate(seed, train, val, ammonia[40:52], tmp / f"seed{seed}", {"seed": seed}))
    return reps


@pytest.mark.parametrize("method", ["none", "mve", "ensemble", "gmm"])
def test_stacked_replicates_equal_separate_runs(tmp_path, ammonia, method):
    uq = parse_uq({"method": method, **({"members": 2} if method == "ensemble" else {}),
                   **({"components": 2} if method == "gmm" else {})})
    model_cfg, cfg = ModelConfig(**SMALL), TrainConfig(**TRAIN)
    # training sets of 19, 22 and 24 structures (the epochs' last batches differ in size: masked steps) and
    # validation sets of 5, 11 and 6 (batches of 8: one replicate has two)
    reps = _replicates(ammonia, tmp_path / "stacked", [(3, 19, 5), (11, 22, 11), (20, 24, 6)])
    assert why_not_stacked(model_cfg, uq, cfg, reps, stack_ensembles=True) is None
    if method == "ensemble":  # on a CPU, by default, an ensemble's seeds train one by one
        assert "stack already" in why_not_stacked(model_cfg, uq, cfg, reps)
    stacked = fit_replicates(model_cfg, uq, cfg, reps, tmp_path / "stack")
    assert not (tmp_path / "stack" / "model.pt").exists()  # the stack is not a model: its replicates are
    for rep, summary in zip(reps, stacked):
        alone = fit_model(model_cfg, uq, cfg, rep.seed, rep.train, rep.val, rep.test, tmp_path / f"alone{rep.seed}",
                          extra={"seed": rep.seed})
        a, b = modelfile.read(rep.out / "model.pt"), modelfile.read(tmp_path / f"alone{rep.seed}" / "model.pt")
        assert a["kind"] == b["kind"]
        assert {k: v for k, v in a["hparams"].items() if k != "fit_info"} == \
            {k: v for k, v in b["hparams"].items() if k != "fit_info"}  # fit_info: the GMM's BIC, to float tolerance
        for name, value in b["state_dict"].items():
            assert torch.allclose(a["state_dict"][name], value, rtol=1e-7, atol=1e-9), name
        assert summary["training"]["best_epoch"] == alone["training"]["best_epoch"]
        np.testing.assert_allclose(summary["training"]["val_forces_mae"], alone["training"]["val_forces_mae"],
                                   rtol=1e-8)
        for key in ("energy_mae", "forces_mae", "spearman", "auc20"):
            if alone["test"].get(key) is not None:
                assert summary["test"][key] == pytest.approx(alone["test"][key], rel=1e-6, abs=1e-9), key
        assert summary["training"]["stacked_replicates"]["replicates"] == 3
        assert json.loads((rep.out / "summary.json").read_text())["test"] == summary["test"]


def test_stacked_replicates_resume_and_refusals(tmp_path, ammonia, ethanol):
    uq, model_cfg, cfg = parse_uq({"method": "none"}), ModelConfig(**SMALL), TrainConfig(**TRAIN)
    reps = _replicates(ammonia, tmp_path / "r", [(1, 20, 6), (2, 20, 6)])
    first = fit_replicates(model_cfg, uq, cfg, reps, tmp_path / "stack")
    again = fit_replicates(model_cfg, uq, cfg, reps, tmp_path / "stack")  # finished: read back, not retrained
    assert [s["test"] for s in first] == [s["test"] for s in again]
    assert why_not_stacked(model_cfg, uq, cfg, reps[:1]) == "one replicate"
    mixed = [Replicate(1, ammonia[:10] + ethanol[:10], ammonia[10:14], ammonia[14:18], tmp_path / "m1"),
             Replicate(2, ammonia[:10] + ethanol[:10], ammonia[10:14], ammonia[14:18], tmp_path / "m2")]
    assert "not one molecule" in why_not_stacked(model_cfg, uq, cfg, mixed)
    partial = parse_uq({"method": "partial_ensemble"})
    assert "own branches" in why_not_stacked(model_cfg, partial, cfg, reps)
    assert "fine-tuning" in why_not_stacked(model_cfg, uq, cfg, reps, init=["a.pt"])


def test_a_stack_with_a_non_finite_loss_trains_its_seeds_alone(tmp_path, ammonia):
    """One seed's data holds a structure whose forces overflow the loss: in a stack its non-finite step would
    skip the other seed's step too, so the seeds train one by one, each as it would alone."""
    import copy

    uq, model_cfg, cfg = parse_uq({"method": "none"}), ModelConfig(**SMALL), TrainConfig(**TRAIN)
    reps = _replicates(ammonia, tmp_path / "r", [(1, 20, 6), (2, 20, 6)])
    bad = copy.deepcopy(reps[1].train.structures[0])
    bad.forces = np.full_like(bad.forces, np.inf)
    reps[1].train.structures[0] = bad
    summaries = fit_replicates(model_cfg, uq, cfg, reps, tmp_path / "stack")
    assert json.loads((tmp_path / "stack" / "fallback.json").read_text())["nonfinite_steps"] > 0
    alone = fit_model(model_cfg, uq, cfg, 1, reps[0].train, reps[0].val, reps[0].test, tmp_path / "alone")
    assert summaries[0]["test"]["forces_mae"] == alone["test"]["forces_mae"]
    assert "stacked_replicates" not in summaries[0]["training"]


def test_masked_adam_step_leaves_members_out_exactly():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = MemberAdam([p], 3, 1e-2)
    p.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    before = (p.detach().clone(), opt.exp_avg[0].clone(), opt.exp_avg_sq[0].clone())
    p.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step(torch.tensor([True, False, True]))
    assert torch.equal(p[1], before[0][1]) and torch.equal(opt.exp_avg[0][1], before[1][1])
    assert torch.equal(opt.exp_avg_sq[0][1], before[2][1]) and not torch.equal(p[0], before[0][0])
    assert opt.member_steps == [2, 1, 2]
    # member 1's next step is its second: the same update as a lone Adam that skipped nothing
    lone = torch.nn.Parameter(torch.randn(1, 4, dtype=torch.float64))
    ref = MemberAdam([lone], 1, 1e-2)
    g1, g2 = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    with torch.no_grad():
        p[1] = lone[0]
    opt.exp_avg[0][1] = 0
    opt.exp_avg_sq[0][1] = 0
    opt.member_steps[1] = 0
    for g in (g1, g2):
        lone.grad, p.grad = g, torch.cat([torch.zeros(1, 4, dtype=torch.float64), g, torch.zeros(1, 4,
                                                                                             dtype=torch.float64)])
        ref.step()
        opt.step(torch.tensor([False, True, False]))
    assert torch.allclose(p[1], lone[0], rtol=1e-14, atol=1e-15)


def test_a_loop_with_stacked_replicates_equals_one_with_separate_seeds(tmp_path, ammonia):
    """Two seeds of a two-generation loop (MVE, and GMM and LLPR on generation 1's shared backbone; EMT as the
    oracle): every seed's summary is the same whether its networks trained stacked with the other seed's, in
    process or on a local Dask cluster's workers, or alone (``replicates: separate``)."""
    from support.tiny_loop import tiny_loop_config, tiny_loop_files

    from uqpot.loop.config import LoopConfig
    from uqpot.loop.replicates import replicates, run_replicates

    from uqpot.core.executor import get_executor

    files = tiny_loop_files(tmp_path, ammonia)
    summaries = {}
    for mode in ("auto", "separate", "dask"):  # dask: auto on a local Dask cluster (the stacks run on its workers)
        raw = tiny_loop_config(tmp_path, files, mode, {})
        raw.pop("until")
        raw.update({"methods": ["mve", "gmm", "llpr"], "uq": {"gmm": {"components": 2}}, "sampler": "adversarial",
                    "attack": {"n_seeds": 2, "iterations": 3, "energy_cutoff": None},
                    "replicates": "separate" if mode == "separate" else "auto",
                    "train": {**raw["train"], "dtype": "float64"}, "store": str(tmp_path / f"{mode}.db")})
        cfgs = replicates(LoopConfig.model_validate(raw), [0, 7])
        if mode == "dask":
            with get_executor("local", n_workers=2) as ex:
                summaries[mode] = run_replicates(cfgs, tmp_path / mode, executor=ex)["per_seed"]
        else:
            summaries[mode] = run_replicates(cfgs, tmp_path / mode)["per_seed"]
    for mode in ("auto", "dask"):
        assert (tmp_path / mode / "stacked" / "gen1" / "backbone" / "replicates.json").is_file()
    assert (tmp_path / "auto" / "stacked" / "gen2" / "mve" / "replicates.json").is_file()
    assert not (tmp_path / "separate" / "stacked").exists()
    assert "stacked with the seeds 0, 7" in (tmp_path / "auto" / "seed7" / "loop.log").read_text()
    for seed in ("0", "7"):
        for g in (1, 2):
            for m, mode in [(m, mode) for m in ("mve", "gmm", "llpr") for mode in ("auto", "dask")]:
                a, b = summaries[mode][seed]["generations"][g][m], summaries["separate"][seed]["generations"][g][m]
                assert (a["n_train"], a["n_val"]) == (b["n_train"], b["n_val"])
                for key in ("energy_mae", "forces_mae", "spearman", "auc20"):
                    if b["test"].get(key) is not None:
                        assert a["test"][key] == pytest.approx(b["test"][key], rel=1e-6, abs=1e-9), (mode, seed, g, m)
                if g == 1:
                    assert a["label"]["n_added"] == b["label"]["n_added"]
