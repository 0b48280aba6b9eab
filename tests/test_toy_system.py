"""A system defined in a test module: registered with ``@register_system``, its data built with a real oracle
(ASE's Lennard-Jones calculator) through the public path, its campaign and criteria looked up by the loop's
MD step, a two-generation active-learning loop of the toy (``system: toy_argon``) run end to end, and every
registered system checked against the System contract."""

from __future__ import annotations

import dataclasses

import pytest

from uqpot.data.io import ReadOptions, read_structures
from uqpot.md.analytic import MorsePotential
from uqpot.md.campaign import CampaignConfig
from uqpot.md.stability import StabilityCriteria
from uqpot.oracle import get_oracle
from uqpot.systems import SYSTEMS, System, check_loop_system, get_system, register_system, system_names
from uqpot.loop.active_learning import LoopConfig
from uqpot.loop.md import run_campaign_for_loop
from support.toy_argon import ArgonClusters


@dataclasses.dataclass
class ToyArgonConfig:
    n_train: int = 6
    n_test: int = 4
    seed: int = 0

    @classmethod
    def quick(cls, **overrides):
        return cls(**{"n_train": 3, "n_test": 2, **overrides})

    def check(self):
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError("n_train and n_test must be >= 1")


class ToyArgon(ArgonClusters):
    name = "toy_argon"
    config = ToyArgonConfig

    def stability_criteria(self, ground_state_energy=None, **overrides):
        return StabilityCriteria(**{"min_distance": 4.5, **overrides})  # Ar atoms 3.8 Å apart: all "collide"


@pytest.fixture(scope="module", autouse=True)
def _registered_while_this_module_runs():
    """``@register_system`` of the toy for the tests of this module only: other test modules (collected before
    any test runs) see the built-in systems."""
    register_system(ToyArgon)
    yield
    SYSTEMS.pop("toy_argon", None)


def test_toy_system_end_to_end(tmp_path):
    system = get_system("toy_argon")
    assert "toy_argon" in system_names()
    oracle = get_oracle("ase", calculator="ase.calculators.lj.LennardJones", kwargs={"sigma": 3.4, "epsilon": 0.0104})
    summary = system.build(tmp_path / "data", config=system.data_config(quick=True), oracle=oracle)
    train = read_structures(tmp_path / "data" / "train.extxyz", ReadOptions())
    assert len(train) == summary["train"]["n"] == 3 and all(s.energy is not None for s in train)
    # the loop accepts the registered name, and its MD step uses the system's preset and criteria
    assert check_loop_system("toy_argon") == "toy_argon" and "system" in LoopConfig.model_fields
    rec = run_campaign_for_loop(MorsePotential(), list(train), {}, "toy_argon", tmp_path / "md")
    assert rec["system"] == "toy_argon" and rec["runs"] == 2
    assert rec["fraction_stable"] == 0.0  # min_distance 4.5 Å: the system's criteria, not the default ones


@pytest.mark.parametrize("name", sorted({*SYSTEMS, "toy_argon"}))
def test_every_registered_system_keeps_the_contract(name):
    system = get_system(name)
    assert isinstance(system, System) and system.name == name and system.study in ("loop", "grid")
    assert isinstance(system.stability_criteria(), StabilityCriteria)
    if system.config is not None:
        cfg = system.data_config(quick=True)
        cfg.check()
        assert type(system).build is not System.build  # a system with options builds its data
    if system.md_preset is not None:
        cfg = system.campaign_config(length_scale=0.5)
        assert isinstance(cfg, CampaignConfig) and cfg.system == name
        assert cfg.duration_fs == system.md_preset["duration_fs"] * 0.5
    for preset, file in system.preset_files.items():
        assert system.preset_file(preset) == file and file.endswith(".yaml")
    with pytest.raises(ValueError, match="known: .*" + name):
        get_system(name + "_unknown")


def test_toy_system_in_an_active_learning_loop(tmp_path):
    """``system: toy_argon`` in a loop config: two generations of a tiny ensemble on the toy's built data,
    labelled by the same Lennard-Jones oracle; each generation's MD campaign is the toy's preset (2 runs of
    20 fs) judged by its criteria (every run fails on the toy's 4.5 Å minimum distance)."""
    from uqpot.loop.active_learning import ActiveLearning
    from uqpot.loop.replicates import run_loop

    system = get_system("toy_argon")
    lj = {"calculator": "ase.calculators.lj.LennardJones", "kwargs": {"sigma": 3.4, "epsilon": 0.0104}}
    system.build(tmp_path / "data", config=system.data_config(n_train=10, n_test=4),
                 oracle=get_oracle("ase", **lj))
    raw = {"seed": 0, "out": str(tmp_path / "loop"), "system": "toy_argon", "methods": ["ensemble"],
           "generations": 2,
           "data": {"train": str(tmp_path / "data" / "train.extxyz"), "test": str(tmp_path / "data" / "test.extxyz"),
                    "align_structures": 2},
           "model": {"features": 8, "interactions": 1, "rbf": 8, "readout_hidden": 8},
           "uq": {"ensemble": {"members": 2}},
           "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "progress": False},
           "attack": {"n_seeds": 2, "iterations": 3, "energy_cutoff": None},
           "md": {"length_scale": 1.0},
           "oracle": {"name": "ase", "options": lj}}
    summary = run_loop(ActiveLearning(LoopConfig.model_validate(raw)))
    assert "system: toy_argon" in (tmp_path / "loop" / "config.yaml").read_text().splitlines()
    for g in (1, 2):
        md = summary["generations"][g]["ensemble"]["md"]
        assert md["system"] == "toy_argon" and md["runs"] == 2
        assert md["fraction_stable"] == 0.0  # the toy's criteria: the default ones would keep every run
        assert md["per_temperature"]["50"]["failure_reasons"] == {"collision": 2}
    g1, g2 = summary["generations"][1]["ensemble"], summary["generations"][2]["ensemble"]
    assert g1["label"]["n_added"] > 0  # the oracle labelled the attack's samples, trained on next
    assert g2["n_train"] + g2["n_val"] == g1["n_train"] + g1["n_val"] + g1["label"]["n_added"]
