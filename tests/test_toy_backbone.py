"""A new backbone is one file: this module defines and registers a toy backbone (a pairwise radial network on
the :class:`~uqpot.nn.potential.Potential` contract, with its options and capabilities) and trains it through
``uqpot train`` (config ``model: {kind: toy, ...}``) as an ensemble, with no other file of uqpot changed.
Then the contract every registered backbone keeps: capabilities declared, hyper-parameters round-trip."""

from typing import Literal

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from pydantic import Field, ValidationError

import uqpot
from uqpot.core import fields as F
from uqpot.cli.main import cli
from uqpot.data.batch import iterate_batches
from uqpot.nn.backbone import (ASSEMBLED, BACKBONES, CAPABILITIES, OPTIONS, BackboneOptions, build_potential, parse_model,
                               register_backbone)
from uqpot.nn.potential import MAX_Z, Potential
from uqpot.nn.stacked import StackedLinear, StackedMLP, init_members


# ------------------------------------------------------------------------------------------- the backbone
class ToyOptions(BackboneOptions):
    """``model: {kind: toy}``: a pairwise radial network."""

    kind: Literal["toy"]
    cutoff: float = Field(4.0, gt=0.0)
    features: int = Field(8, ge=1)
    rbf: int = Field(6, ge=2)

    def potential_hparams(self, members: int, seeds: list[int], train=None) -> dict:
        return dict(backbone="toy", cutoff=self.cutoff, features=self.features, rbf=self.rbf, members=members,
                    seeds=list(seeds))


class PairPotential(Potential):
    """ξ_i = tanh(e(Z_i) + Σ_j W·φ(r_ij) ∘ e(Z_j)) with Gaussians φ under a cosine cutoff; edge lists only."""

    title = "toy pair"
    supports_dense = False
    compilable = False
    forward_ad = False

    def __init__(self, cutoff: float = 4.0, features: int = 8, rbf: int = 6, members: int = 1,
                 seeds: list[int] | None = None, readout_hidden: int | None = None):
        """``readout_hidden`` (the hidden width of heads on ξ) is the feature width; stored, not chosen."""
        torch.nn.Module.__init__(self)
        seeds = list(seeds) if seeds is not None else list(range(members))
        self.hparams = dict(backbone="toy", cutoff=float(cutoff), features=features, rbf=rbf,
                            readout_hidden=features, members=members, seeds=[int(s) for s in seeds])
        self.members, self.cutoff = members, float(cutoff)
        self.embedding = StackedLinear(members, MAX_Z + 1, features, bias=False)
        self.filter = StackedLinear(members, rbf, features)
        self.readout = StackedMLP(members, features, features, 1, "silu")
        self.register_buffer("centres", torch.linspace(0.5, cutoff, rbf))
        init_members(self, seeds)
        self._register_reference_buffers()

    def _energy_outputs(self, batch, pos_m, offsets=None) -> dict:
        i, j = batch.edge_index[0], batch.edge_index[1]
        vec = pos_m.index_select(1, j) - pos_m.index_select(1, i)
        if offsets is not None:
            vec = vec + offsets
        elif batch.periodic:
            vec = vec + batch.edge_offsets()
        r = vec.norm(dim=-1, keepdim=True)  # (M, E, 1)
        cut = 0.5 * (torch.cos(np.pi * r / self.cutoff) + 1) * (r < self.cutoff)
        phi = torch.exp(-((r - self.centres.to(r.dtype)) ** 2)) * cut  # (M, E, K)
        onehot = torch.nn.functional.one_hot(batch.numbers, MAX_Z + 1).to(pos_m.dtype)
        e = self.embedding(onehot.unsqueeze(0).expand(self.members, -1, -1))  # (M, N, F)
        msg = self.filter(phi) * e.index_select(1, j)
        s = torch.tanh(e + torch.zeros_like(e).index_add(1, i, msg))
        e_atom = self.readout(s).squeeze(-1) * self.energy_scale
        e_res = e_atom.new_zeros(self.members, batch.num_structures).index_add(1, batch.batch, e_atom)
        return {F.FEATURES: s, F.ATOMIC_ENERGY: e_atom, F.ENERGY_RESIDUAL: e_res}


@pytest.fixture(scope="module", autouse=True)
def _registered_while_this_module_runs():
    """``@register_backbone("toy", options=ToyOptions)`` for the tests of this module only: other test modules
    (collected before any test runs) see the built-in backbones."""
    register_backbone("toy", options=ToyOptions)(PairPotential)
    yield
    BACKBONES.pop("toy", None)
    OPTIONS.pop("toy", None)


# ------------------------------------------------------------------------------------------- the tests
@pytest.fixture(scope="module")
def run(tmp_path_factory, ethanol_path):
    """``uqpot train`` with ``model: {kind: toy, features: 6}`` and ``uq: {method: ensemble, members: 2}``."""
    tmp = tmp_path_factory.mktemp("toy_backbone")
    cfg = {"seed": 0, "out": str(tmp / "run"), "data": {"path": str(ethanol_path)},
           "split": {"train": 40, "val": 12, "test": 18, "seed": 0}, "model": {"kind": "toy", "features": 6},
           "uq": {"method": "ensemble", "members": 2}, "train": {"epochs": 3, "batch_size": 8, "lr": 5e-3}}
    (tmp / "toy.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(cli, ["train", str(tmp / "toy.yaml"), "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp / "run"


def test_train_save_and_reload(run, ethanol):
    model = uqpot.load(run / "model.pt")
    assert type(model.potential) is PairPotential and model.members == 2
    assert uqpot.nn.modelfile.read(run / "model.pt")["hparams"]["potential"]["backbone"] == "toy"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == {"kind": "toy", "cutoff": 4.0,
                                                                        "features": 6, "rbf": 6}
    # the two members differ (own seeds), and the reloaded file predicts what the trained model predicted
    w = model.potential.filter.weight
    assert not torch.equal(w[0], w[1])
    test = ethanol[60:64]
    _, batch = next(iter(iterate_batches(test, 4, model.cutoff, dtype=model.dtype)))
    again = uqpot.load(run / "model.pt")
    a, b = model(batch, create_graph=False), again(batch, create_graph=False)
    for key in (F.ENERGY, F.FORCES, F.UNCERTAINTY):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    u = a[F.UNCERTAINTY].detach()
    assert torch.isfinite(u).all() and (u > 0).all()
    assert (run / "test_per_structure.csv").is_file()


def test_capabilities_are_read_from_the_class(run, tmp_path, ethanol_path):
    """The dense layout and compile are refused for the toy (it declares it reads edge lists only)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for key, value, message in (("layout", "dense", "'dense' is not available for toy pair networks"),
                                ("compile", True, "train.compile: not available for toy pair networks")):
        bad = {**cfg, "out": str(tmp_path / key), "train": {**cfg["train"], key: value}}
        (tmp_path / f"{key}.yaml").write_text(yaml.safe_dump(bad))
        res = CliRunner().invoke(cli, ["train", str(tmp_path / f"{key}.yaml"), "--no-progress"])
        assert res.exit_code != 0 and message in res.output, res.output
        assert not (tmp_path / key).exists()


def test_unknown_kind_names_the_registered_ones():
    with pytest.raises(Exception, match="'painn', 'mace', 'sevennet' or 'toy'"):
        parse_model({"kind": "nequip"})


def test_registration_refuses_a_backbone_without_its_capabilities():
    class IncompleteOptions(BackboneOptions):
        kind: Literal["incomplete"]
        cutoff: float = 4.0

    class Incomplete(Potential):
        title = "incomplete"

    with pytest.raises(TypeError, match="supports_dense, compilable, forward_ad"):
        register_backbone("incomplete", options=IncompleteOptions)(Incomplete)
    assert "incomplete" not in BACKBONES


# ------------------------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", sorted({*BACKBONES, "toy"}))
def test_every_backbone_declares_its_capabilities_and_options(name):
    cls = BACKBONES[name]
    assert cls.backbone == name and issubclass(cls, Potential)
    for attr in CAPABILITIES:
        assert attr in cls.__dict__, f"{name} does not declare {attr}"
    assert isinstance(cls.supports_dense, bool) and isinstance(cls.compilable, bool)
    assert isinstance(cls.forward_ad, bool) and isinstance(cls.title, str)
    if name in ASSEMBLED:  # built from trained files only: no model section, never trained as one network
        assert cls.assembled and name not in OPTIONS
        with pytest.raises(ValidationError, match="committee"):
            parse_model({"kind": name})
        return
    assert not cls.assembled
    opts = OPTIONS[name]
    assert issubclass(opts, BackboneOptions) and "cutoff" in opts.model_fields
    parsed = parse_model({"kind": name})
    assert type(parsed) is opts and parse_model(parsed.model_dump(mode="json")) == parsed


@pytest.mark.parametrize("name", sorted({*OPTIONS, "toy"}))
def test_hparams_round_trip(name, ethanol):
    """A potential built from its options' hyper-parameters rebuilds from its own ``hparams`` with the same
    hyper-parameters (what a model file stores)."""
    try:
        BACKBONES[name].check_available()
    except ImportError as exc:
        pytest.skip(str(exc))
    hp = parse_model({"kind": name}).potential_hparams(2, [3, 4], ethanol[:8])
    pot = build_potential(hp)
    again = build_potential(pot.hparams)
    assert type(again) is type(pot) and again.hparams == pot.hparams and pot.members == 2
    assert pot.hparams.get("backbone", "painn") == name
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in pot.state_dict().items()}
