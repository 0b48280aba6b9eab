"""A new UQ method is one file: this module defines and registers a toy method (its options, its output
field, its model-file kind) and runs it through ``uqpot train`` (config ``uq: {method: toy}``), the contract
checks, ``uqpot wrap``, ``uqpot evaluate``, the ASE calculator, the adversarial attack and batched MD, with no
other file of uqpot changed."""

from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from pydantic import Field

import uqpot
from support import contract as C
from uqpot.core import fields as F
from uqpot.cli.main import cli
from uqpot.data.batch import iterate_batches
from uqpot.uq.base import UQMethod, register_method
from uqpot.uq.options import UQOptions

# ------------------------------------------------------------------------------------------- the method
TOY_DISTANCE = F.register("toy_distance", True, "", "toy: scaled squared distance of ξ to the training mean")


class ToyOptions(UQOptions):
    method: Literal["toy"] = "toy"
    scale: float = Field(1.0, gt=0.0)


@register_method("toy")
class Toy(UQMethod):
    """U_i = scale · |ξ_i − mean of the training atoms' ξ|² (a post-hoc method on any trained potential)."""

    options = ToyOptions
    posthoc = True
    uncertainty_description = "scaled squared distance of the latent features to their training mean (toy)"

    def __init__(self, potential: dict, reduction: str = "mean", scale: float = 1.0):
        super().__init__(potential, reduction)
        self.scale = float(scale)
        self.register_buffer("toy_mean", torch.zeros(self.potential.hparams["features"]))

    def method_hparams(self) -> dict:
        return {"scale": self.scale}

    @torch.no_grad()
    def fit_posthoc(self, train, val=None, batch_size: int = 64) -> dict:
        feats = [self.potential.forward_members(b, compute_forces=False)[F.FEATURES][0]
                 for _, b in iterate_batches(train, batch_size, self.cutoff, dtype=self.dtype, device=self.device)]
        self.toy_mean.copy_(torch.cat(feats).mean(0))
        return {"n_atoms": int(sum(len(f) for f in feats))}

    def combine(self, out: dict, batch) -> dict:
        res = {k: v.squeeze(0) for k, v in out.items()}
        res[TOY_DISTANCE] = self.scale * (res[F.FEATURES] - self.toy_mean).pow(2).sum(-1)
        res[F.UNCERTAINTY_ATOM] = res[TOY_DISTANCE]
        return res


@pytest.fixture(scope="module", autouse=True)
def _unregister_at_the_end():
    """The toy stays registered while this module runs; other test modules see the built-in methods."""
    yield
    from uqpot.nn import modelfile
    from uqpot.uq.base import METHODS
    from uqpot.uq.options import OPTIONS

    METHODS.pop("toy", None)
    OPTIONS.pop("toy", None)
    modelfile._REGISTRY.pop("uq.toy", None)
    F.FIELDS.pop(TOY_DISTANCE, None)


# ------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def run(tmp_path_factory, ethanol_path):
    """``uqpot train`` with ``uq: {method: toy, scale: 2}``."""
    tmp = tmp_path_factory.mktemp("toy")
    cfg = {"seed": 0, "out": str(tmp / "run"), "data": {"path": str(ethanol_path)},
           "split": {"train": 40, "val": 12, "test": 18, "seed": 0}, "model": C.SMALL,
           "uq": {"method": "toy", "scale": 2.0}, "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3}}
    (tmp / "toy.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", str(tmp / "toy.yaml"), "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp / "run"


def test_train_and_evaluate(run, ethanol_path):
    model = uqpot.load(run / "model.pt")
    assert type(model) is Toy and model.scale == 2.0 and model.toy_mean.abs().sum() > 0
    extra = uqpot.nn.modelfile.read(run / "model.pt")["extra"]
    assert extra["posthoc"] == {"n_atoms": 40 * 9} and np.isfinite(extra["calibration"]["a"])
    res = CliRunner().invoke(cli, ["evaluate", str(run / "model.pt"), str(ethanol_path), "--indices",
                                   f"{run / 'split.json'}:test"], catch_exceptions=False)
    assert res.exit_code == 0 and "toy: Spearman" in res.output, res.output
    # the config names the method's options; a foreign or unknown option is an error naming the key
    bad = yaml.safe_load((run / "config.yaml").read_text())
    assert bad["uq"] == {"method": "toy", "reduction": "mean", "scale": 2.0}
    from uqpot.fit.config import RunConfig
    from uqpot.core.config_io import parse
    from uqpot.core.errors import ConfigError

    for uq, message in (({"method": "toy", "lam": 0.2}, "'uq.lam' applies to evidential, not to 'toy'"),
                        ({"method": "toy", "scale": -1}, "'uq.scale'")):
        with pytest.raises(ConfigError, match=message):
            parse(RunConfig, {**bad, "uq": uq})


def test_contract(run, ethanol):
    m = uqpot.load(run / "model.pt").double()
    test = [ethanol[i] for i in (60, 61, 62)]
    C.check_fields(m, test)
    C.check_derivatives(m, test[0])
    C.check_dense_equals_sparse(m, test)
    C.check_reductions(lambda r: C.generic_factory("toy", ethanol[:16], ethanol[16:24], reduction=r), test)
    C.check_calibration(m, ethanol[16:24])


def test_save_load_round_trip(run, ethanol, tmp_path):
    C.check_round_trip(uqpot.load(run / "model.pt"), [ethanol[i] for i in (60, 61)], tmp_path)


def test_wrap_calculator_attack_and_md(run, ethanol, tmp_path):
    from uqpot.md.batched import BatchedMD
    from uqpot.md.calculator import UQPotCalculator
    from uqpot.sample.adversarial import AttackConfig, BoltzmannReference, attack
    from uqpot.fit.wrap import wrap

    # re-calibrate the trained toy model; wrap its plain potential with the toy method again
    res = CliRunner().invoke(cli, ["wrap", str(run / "model.pt"), "--method", "calibrate", "--out",
                                   str(tmp_path / "recal.pt")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    plain = tmp_path / "plain.pt"
    uqpot.save(uqpot.load(run / "model.pt").potential, plain)
    from uqpot.data.io import write_extxyz

    write_extxyz(ethanol[:20], tmp_path / "train.extxyz")
    write_extxyz(ethanol[20:30], tmp_path / "val.extxyz")
    path, summary = wrap([plain], "toy", data=tmp_path / "train.extxyz", val=tmp_path / "val.extxyz",
                         out=tmp_path / "t.pt", options={"scale": 3.0})
    model = uqpot.load(path)
    assert model.scale == 3.0 and summary["posthoc"] == {"n_atoms": 20 * 9}

    atoms = ethanol[50].to_atoms()
    atoms.calc = UQPotCalculator(model, energy_unit="kcal/mol")
    assert np.isfinite(atoms.get_potential_energy())
    u = atoms.calc.results[F.UNCERTAINTY]
    assert u > 0 and atoms.calc.results[F.UNCERTAINTY_ATOM].shape == (9,)

    ref = BoltzmannReference.from_energies(ethanol[:20].energies(), [s.n_atoms for s in ethanol[:20]], kT=20.0)
    out = attack(model, [ethanol[i] for i in (40, 41)], ref,
                 AttackConfig(iterations=5, lr=0.01, n_seeds=2, energy_cutoff=None, min_displacement=0.0, kT=20.0))
    hist = out.history["uncertainty"]
    assert hist.shape == (6, 2) and np.all(hist[-1] > hist[0])  # U climbs

    md = BatchedMD(model, [ethanol[i] for i in (40, 41)], timestep_fs=0.25, temperatures_K=300.0, seeds=[1, 2],
                   check_every=5, record_every=5).run(10)
    for rec in md.replicas:
        assert len(rec.uncertainty) == 3 and np.all(np.isfinite(rec.uncertainty)) and np.ptp(rec.uncertainty) > 0


@pytest.mark.slow
def test_compiled_md_equals_eager(run, ethanol):
    C.check_compiled_md(uqpot.load(run / "model.pt").double(), [ethanol[i] for i in (40, 41)])
