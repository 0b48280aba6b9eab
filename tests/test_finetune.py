"""Fine-tuning: warm starts copy trained weights into the model to train, the reference energies follow
the new data, and the loop with ``init_model`` fine-tunes every method from the given file."""

import copy

import numpy as np
import pytest
import torch

from uqpot.data.structures import StructureDataset

from uqpot.core import fields as F
from uqpot.nn import modelfile
from uqpot.data.batch import collate
from uqpot.nn.potential import Potential
from uqpot.fit import finetune
from uqpot.fit.finetune import refit_shift
from uqpot.fit.run import member_count, trains_plain_potential
from uqpot.uq.options import parse_uq

def build_from(sources, uq, seed):
    return finetune.build_from(sources, uq, seed, member_count(uq), trains_plain_potential(uq))


HP = dict(features=16, interactions=2, rbf=8, cutoff=5.0, readout_hidden=8, members=1, seeds=[3])


@pytest.fixture
def source(ethanol):
    p = Potential(**HP).to(torch.float64)
    p.fit_reference(ethanol.subset(range(20)))
    return p.eval()


def _out(model, ds):
    b = collate([ds[k] for k in range(4)], cutoff=5.0, dtype=torch.float64)
    return model.eval().forward_members(b)


@pytest.mark.parametrize("method", ["none", "ensemble", "mve", "gmm"])
def test_warm_start_copies_the_trained_network(source, ethanol, method):
    opts = {"ensemble": {"members": 3}}.get(method, {})
    model = build_from([source], parse_uq({"method": method, **opts}), seed=11)
    pot = model if isinstance(model, Potential) else model.potential
    ref, got = _out(source, ethanol), _out(pot, ethanol)
    for m in range(pot.members):  # every member starts from the source's weights
        torch.testing.assert_close(got[F.ENERGY][m], ref[F.ENERGY][0], rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(got[F.FORCES][m], ref[F.FORCES][0], rtol=1e-12, atol=1e-9)
    assert pot.hparams["seeds"][0] == 11  # new seeds: the members' batch orders and new heads differ


def test_ensemble_members_from_one_file_each(source, ethanol):
    other = Potential(**{**HP, "seeds": [4]}).to(torch.float64)
    other.fit_reference(ethanol.subset(range(20)))
    model = build_from([source, other], parse_uq({"method": "ensemble", "members": 2}), seed=0)
    got = _out(model.potential, ethanol)
    for m, src in enumerate((source, other)):
        torch.testing.assert_close(got[F.FORCES][m], _out(src, ethanol)[F.FORCES][0], rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="differs .* in features"):
        build_from([source, Potential(**{**HP, "features": 8})], parse_uq({"method": "ensemble", "members": 2}), seed=0)


def test_refit_shift_moves_references_to_the_new_data(source, ethanol):
    """Energies of the new data offset by +40 kcal/mol (as from another level of theory): after the shift the
    model's mean residual on them is zero (one composition: least squares matches the mean)."""
    data = StructureDataset([copy.deepcopy(s) for s in ethanol.subset(range(20, 40)).structures])  # the
    for s in data.structures:  # session's shared structures stay as read
        s.energy = s.energy + 40.0
    model = build_from([source], parse_uq({"method": "none"}), seed=0)

    def residual():
        b = collate(data.structures, cutoff=5.0, dtype=torch.float64)
        return data.energies() - model.eval()(b, compute_forces=False)[F.ENERGY].detach().numpy()

    assert abs(residual().mean()) > 30.0
    delta = refit_shift(model, data)
    assert abs(residual().mean()) < 1e-6
    assert delta.sum() * 0 == 0 and np.isfinite(delta).all()


def test_loop_fine_tunes_every_method_from_init_model(tmp_path, ammonia):
    pytest.importorskip("tblite")
    from test_loop import loop_cfg

    from uqpot.data.io import write_extxyz
    from uqpot.fit.run import fit_model
    from uqpot.nn.painn import PaiNNOptions as ModelConfig
    from uqpot.train.config import TrainConfig
    from uqpot.loop.active_learning import ActiveLearning, LoopConfig
    from uqpot.loop.replicates import run_loop

    e = ammonia.energies()
    low, high = np.nonzero(e < 5.0)[0][:24], np.nonzero(e >= 5.0)[0][:12]
    write_extxyz(ammonia.subset(low), tmp_path / "train.extxyz")
    write_extxyz(ammonia.subset(high), tmp_path / "test.extxyz")
    raw = loop_cfg(tmp_path, (tmp_path / "train.extxyz", tmp_path / "test.extxyz"), methods=("ensemble", "gmm"))
    pre = tmp_path / "pre"
    fit_model(ModelConfig(**raw["model"]), parse_uq({"method": "none"}), TrainConfig(epochs=2, batch_size=8,
              progress=False), 0, ammonia.subset(low[:16]), ammonia.subset(low[16:]), ammonia.subset([]), pre)
    raw["init_model"] = str(pre / "model.pt")
    raw["finetune"] = {"lr": 1e-4, "epochs": 2, "readout": "reinit"}
    summary = run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    root = tmp_path / "loop"
    for m in ("ensemble", "gmm"):
        assert summary["generations"][2][m]["test"]["forces_mae"] > 0
    g1 = modelfile.read(root / "gen1" / "ensemble" / "train" / "model.pt")["extra"]
    assert g1["fine_tuned_from"][0]["file"] == str(pre / "model.pt")
    g2 = modelfile.read(root / "gen2" / "gmm" / "train" / "model.pt")["extra"]
    assert g2["fine_tuned_from"][0]["file"] == str(root / "gen1" / "gmm" / "train" / "model.pt")
    # the readout starts afresh from init_model only: generation 2 keeps generation 1's
    assert (g1["fine_tuning"]["readout"], g2["fine_tuning"]["readout"]) == ("reinit", "keep")
    hist = (root / "gen2" / "gmm" / "train" / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + 2  # finetune.epochs
    # a pickled or missing init_model is refused before anything is written
    raw2 = {**raw, "out": str(tmp_path / "bad"), "init_model": str(tmp_path / "nothing.pt")}
    with pytest.raises(Exception, match="nothing.pt"):
        ActiveLearning(LoopConfig.model_validate(raw2)).prepare()
    assert not (tmp_path / "bad").exists()


def test_a_loop_written_before_new_options_still_resumes(tmp_path):
    """A loop's config.yaml without the options added since (init_model, finetune, train.stress_weight) is the
    same loop: resuming it is not refused as a different config."""
    import yaml

    from test_loop import loop_cfg
    from uqpot.loop.config import LoopConfig
    from uqpot.loop.resume import check_same_config as _check_same_config

    cfg = LoopConfig.model_validate(loop_cfg(tmp_path, (tmp_path / "a.extxyz", tmp_path / "b.extxyz")))
    old = cfg.model_dump(mode="json")
    for key in ("init_model", "finetune"):
        old.pop(key)
    old["train"].pop("stress_weight")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_same_config(tmp_path, cfg)  # no error
    other = cfg.model_copy(update={"init_model": tmp_path / "x.pt"})
    with pytest.raises(Exception, match="different config"):
        _check_same_config(tmp_path, other)


def test_a_loop_started_with_explicit_compile_resumes_on_its_path(tmp_path):
    """A loop started with ``train.compile: false`` (the default before ``auto``) and resumed with ``auto``
    goes on uncompiled; any other difference is refused, naming the setting."""
    import yaml

    from test_loop import loop_cfg
    from uqpot.loop.config import LoopConfig
    from uqpot.loop.resume import check_same_config as _check_same_config

    cfg = LoopConfig.model_validate(loop_cfg(tmp_path, (tmp_path / "a.extxyz", tmp_path / "b.extxyz")))
    assert cfg.train.compile == "auto"
    old = cfg.model_dump(mode="json")
    old["train"]["compile"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    said = []
    went_on = _check_same_config(tmp_path, cfg, said.append)
    assert went_on.train.compile is False and went_on.train.lr == cfg.train.lr
    assert said and "train.compile: False" in said[0]
    forced = cfg.model_copy(update={"train": cfg.train.model_copy(update={"compile": True})})
    with pytest.raises(Exception, match=r"train\.compile \(False then, True now\)"):
        _check_same_config(tmp_path, forced)
    other = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
    with pytest.raises(Exception, match=r"train\.lr"):
        _check_same_config(tmp_path, other)


def test_a_loop_that_only_attacks_resumes_with_other_md_sampler_settings(tmp_path):
    """``sampling`` (the MD samplers' settings) is never read by a loop whose methods all attack, so a study
    that changes it resumes its attack loops; a loop that samples by MD still refuses, naming the setting."""
    import yaml

    from test_loop import loop_cfg
    from uqpot.loop.config import LoopConfig
    from uqpot.loop.resume import check_same_config as _check_same_config

    base = loop_cfg(tmp_path, (tmp_path / "a.extxyz", tmp_path / "b.extxyz"))
    for sampler, goes_on in (("adversarial", True), ("md", False), ({"ensemble": "biased_md"}, False)):
        cfg = LoopConfig.model_validate({**base, "sampler": sampler})
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        other = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"replicas": 7, "steps": 50})})
        if goes_on:
            assert _check_same_config(tmp_path, other).sampling.replicas == 7
        else:
            with pytest.raises(Exception, match=r"sampling\.replicas \(20 then, 7 now\)"):
                _check_same_config(tmp_path, other)
        lr = other.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.5})})
        with pytest.raises(Exception, match=r"train\.lr"):  # every setting it reads is still compared
            _check_same_config(tmp_path, lr)


def test_parameter_blocks_hold_every_weight_once(source):
    blocks = source.parameter_blocks()
    assert [name for name, _ in blocks] == ["embedding", "interaction 1", "interaction 2", "readout"]
    names = [n for _, ns in blocks for n in ns]
    assert sorted(names) == sorted(n for n, _ in source.named_parameters()) and len(set(names)) == len(names)
    assert all(n.startswith("readout.") for n in dict(blocks)["readout"])
    assert all(".messages.1." in n or ".updates.1." in n for n in dict(blocks)["interaction 2"])


@pytest.mark.parametrize("trainable, blocks, trained", [
    ("readout", 1, {"readout"}),
    ("last_blocks", 1, {"interaction 2", "readout"}),
    ("all", 1, {"embedding", "interaction 1", "interaction 2", "readout"}),
])
def test_fine_tuning_trains_only_the_chosen_blocks(tmp_path, source, ethanol, trainable, blocks, trained):
    """fit_model from an init file with finetune.trainable: the frozen blocks' weights leave training exactly
    as they came, the trained ones move; MVE's own head always trains; the model file records the mode."""
    from uqpot.fit.finetune import FinetuneSettings
    from uqpot.fit.run import fit_model
    from uqpot.train.config import TrainConfig

    init = modelfile.save(source, tmp_path / "source.pt")
    out = tmp_path / trainable
    fit_model(None, parse_uq({"method": "mve"}), TrainConfig(epochs=2, batch_size=8, lr=1e-3, progress=False), 0,
              ethanol.subset(range(40, 64)), ethanol.subset(range(64, 72)), ethanol.subset([]), out, init=[init],
              finetune=FinetuneSettings(trainable=trainable, blocks=blocks))
    rec = modelfile.read(out / "model.pt")
    assert rec["extra"]["fine_tuning"]["trainable"] == trainable
    assert set(rec["extra"]["fine_tuning"]["blocks"]) == trained
    state = rec["state_dict"]
    before = source.state_dict()
    for name, names in source.parameter_blocks():
        moved = [not torch.equal(state[f"potential.{n}"][0].to(torch.float64), before[n][0].to(torch.float64))
                 for n in names]
        assert (any(moved) if name in trained else not any(moved)), (name, trainable)
    heads = [k for k in state if not k.startswith("potential.")]
    assert heads  # MVE's variance head, trained from its seeded start


def test_last_blocks_beyond_the_network_is_refused(source):
    from uqpot.fit.finetune import FinetuneSettings, freeze

    model = build_from([source], parse_uq({"method": "none"}), seed=0)
    with pytest.raises(ValueError, match="3 > the network's 2 interaction blocks"):
        freeze(model, FinetuneSettings(trainable="last_blocks", blocks=3))


def test_reinit_readout_gives_each_member_its_own_seeded_readout(source, ethanol):
    """finetune.readout: reinit: every member's readout is the one a network built with that member's seed
    starts from (the backbone's own initialisation), all members' readouts differ, the rest of the network
    stays the trained source's; the same seed gives the same readouts."""
    uq = parse_uq({"method": "ensemble", "members": 3})
    model = build_from([source], uq, seed=11)
    replaced = finetune.reinit_readout(model)
    pot = model.potential
    seeds = pot.hparams["seeds"]
    readout = dict(pot.parameter_blocks())["readout"]
    assert sorted(replaced) == sorted(readout)
    params, before = dict(pot.named_parameters()), dict(source.named_parameters())
    for n in params:
        for m in range(3):
            same = torch.equal(params[n][m].to(torch.float64), before[n][0].to(torch.float64))
            assert (not same) if n in readout else same, n
    for m, s in enumerate(seeds):
        single = dict(Potential(**{**HP, "seeds": [s]}).named_parameters())
        for n in readout:
            torch.testing.assert_close(params[n][m], single[n][0].to(params[n].dtype), rtol=0, atol=0)
    again = build_from([source], uq, seed=11)
    finetune.reinit_readout(again)
    for n in readout:
        assert torch.equal(dict(again.potential.named_parameters())[n], params[n])


def test_fine_tuning_with_a_fresh_readout_starts_members_apart(tmp_path, source, ethanol):
    """fit_model from one init file with finetune.readout: reinit: the ensemble's members disagree after
    training (their readouts started apart), and the model file records the choice."""
    from uqpot.fit.finetune import FinetuneSettings
    from uqpot.fit.run import fit_model
    from uqpot.train.config import TrainConfig

    init = modelfile.save(source, tmp_path / "source.pt")
    fit_model(None, parse_uq({"method": "ensemble", "members": 2}),
              TrainConfig(epochs=2, batch_size=8, lr=1e-3, progress=False), 0, ethanol.subset(range(40, 64)),
              ethanol.subset(range(64, 72)), ethanol.subset([]), tmp_path / "run", init=[init],
              finetune=FinetuneSettings(trainable="readout", readout="reinit"))
    rec = modelfile.read(tmp_path / "run" / "model.pt")
    assert rec["extra"]["fine_tuning"]["readout"] == "reinit"
    model = modelfile.load(tmp_path / "run" / "model.pt")
    forces = _out(model.potential.to(torch.float64), ethanol)[F.FORCES]
    assert (forces[0] - forces[1]).abs().mean() > 1e-3
