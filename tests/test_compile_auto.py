"""``train.compile: auto``: the compiled step where the run's size repays the measured compilation time,
eager elsewhere; the choice depends on the run alone and is written down."""

import pytest
import torch

from conftest import silica_like
from uqpot.fit.config import RunConfig
from uqpot.train.config import TrainConfig
from uqpot.core.config_io import parse
from uqpot.data.structures import Structure, StructureDataset
from uqpot.core.errors import ConfigError
from uqpot.nn.potential import Potential
from uqpot.train import autocompile as auto
from uqpot.train.trainer import Trainer
from uqpot.uq import MVE, Ensemble

CPU = torch.device("cpu")


def test_auto_compiles_long_molecular_runs_only(ethanol, ammonia):
    big, small = ethanol[:400], ammonia[:78]
    paper = Potential()
    long_run, short_run = TrainConfig(epochs=300, batch_size=16), TrainConfig(epochs=10, batch_size=16)
    on, why = auto.choose_compile("auto", paper, big, long_run, CPU)
    assert on and "compiled" in why
    # the rule's arithmetic: 7,500 steps of c·16·9²·128 s eager, a fraction 1 − 1/s of each saved
    assert f"{7500 * auto.EAGER_S_PER_UNIT * 16 * 81 * 128 * (1 - 1 / auto.SPEEDUP):.0f} s" in why
    assert not auto.choose_compile("auto", paper, big, short_run, CPU)[0]
    # ammonia's quick preset (78 structures, 100 epochs): too little work to repay a cold compilation
    assert not auto.choose_compile("auto", Potential(features=64), small, TrainConfig(epochs=100), CPU)[0]
    # wider work (members) moves the break-even: the same run as a 5-member ensemble compiles
    mid = TrainConfig(epochs=20, batch_size=16)
    assert not auto.choose_compile("auto", paper, big, mid, CPU)[0]
    ens = Ensemble(dict(Potential().hparams, members=5, seeds=list(range(5))))
    assert auto.choose_compile("auto", ens, big, mid, CPU)[0]


def test_auto_stays_eager_where_compiling_is_not_available(ethanol):
    big, long_run = ethanol[:400], TrainConfig(epochs=300, batch_size=16)
    cells = StructureDataset([Structure.from_atoms(silica_like(seed=k)) for k in range(400)])
    on, why = auto.choose_compile("auto", Potential(), cells, long_run, CPU)
    assert not on and "edge list" in why
    mve = MVE(Potential().hparams)
    on, why = auto.choose_compile("auto", mve, big, long_run, CPU)
    assert not on and "eager" in why
    assert not auto.choose_compile("auto", Potential(), big, long_run, torch.device("cuda"))[0]
    assert not auto.choose_compile("auto", Potential(), big, TrainConfig(epochs=300, layout="sparse"), CPU)[0]
    # an explicit setting is kept as it is
    assert auto.choose_compile(False, Potential(), big, long_run, CPU) == (False, "set in the config")
    assert auto.choose_compile(True, Potential(), big, TrainConfig(epochs=1), CPU)[0]


def test_trainer_records_the_choice(tmp_path, ammonia):
    model = Potential(features=8, interactions=1, rbf=4, readout_hidden=4, members=1, seeds=[0])
    model.fit_reference(ammonia[:8])
    res = Trainer(model, ammonia[:8], ammonia[8:12], TrainConfig(epochs=1, batch_size=4, progress=False),
                  tmp_path).fit()
    assert res.compiled is False and "eager" in res.compile_reason
    assert res.as_dict()["compiled"] is False
    assert "train.compile: auto: predicted saving" in (tmp_path / "train.log").read_text()


def test_compile_setting_is_typed():
    base = {"data": {"path": "x.extxyz"}, "out": "o"}
    assert parse(RunConfig, {**base, "train": {"compile": "auto"}}).train.compile == "auto"
    assert parse(RunConfig, base).train.compile == "auto"
    assert parse(RunConfig, {**base, "train": {"compile": False}}).train.compile is False
    with pytest.raises(ConfigError, match="train.compile"):
        parse(RunConfig, {**base, "train": {"compile": "sometimes"}})


def test_md_auto_compiles_long_campaigns_of_many_replicas_only(ammonia):
    from uqpot.md.campaign import CampaignConfig, run_campaign
    from uqpot.md.neb import nh3_pyramid

    paper = Potential()
    nh3 = [nh3_pyramid() for _ in range(400)]
    on, why = auto.choose_md_compile("auto", paper, nh3, 10_000, CPU)  # the paper's ammonia campaigns
    assert on and "compiled" in why
    assert not auto.choose_md_compile("auto", paper, nh3[:30], 1_000, CPU)[0]  # a quick preset's
    assert not auto.choose_md_compile("auto", paper, nh3, 10_000, torch.device("cuda"))[0]
    assert not auto.choose_md_compile("auto", paper, [silica_like()], 10_000, CPU)[0]
    assert auto.choose_md_compile(True, paper, nh3[:1], 1, CPU) == (True, "set in the config")
    # a campaign records the choice of every batch of replicas in its summary
    small = Potential(features=8, interactions=1, rbf=4, readout_hidden=4, members=1, seeds=[0])
    small.fit_reference(ammonia[:8])
    cfg = CampaignConfig(system="ammonia", temperatures_K=[300.0], runs=2, duration_fs=5.0,
                         timestep_fs=0.5, ground_state_energy=None)
    res = run_campaign(cfg, small.eval(), list(ammonia)[:2])
    compiled, why = res.summary()["compiled"][0]
    assert compiled is False and "eager" in why
