"""SevenNet-0 as a uqpot backbone (``model.kind: sevennet``, :mod:`uqpot.nn.sevennet`): energies, forces and
stress in uqpot's units equal SevenNet's own ASE calculator on molecules and on a triclinic periodic cell;
the features and the last layer keep the backbone contract; the model file round-trips.  The weights ship
inside the sevenn package (no network); the network is loaded once for the module."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.stress import voigt_6_to_full_3x3_stress

import uqpot
from uqpot.core import fields as F
from uqpot.core.units import EV_TO_KCAL_PER_MOL as EV
from uqpot.data.batch import collate
from uqpot.data.structures import Structure
from uqpot.nn import modelfile
from uqpot.nn.backbone import parse_model
from uqpot.nn.sevennet import import_sevenn

try:
    import_sevenn()
except ImportError as exc:  # the optional extra is not installed
    pytest.skip(f"sevenn is not importable ({exc}); pip install 'uqpot[sevennet]'", allow_module_level=True)

from sevenn.calculator import SevenNetCalculator  # noqa: E402

from uqpot.nn.sevennet import LAST_LAYER, SevenNetPotential  # noqa: E402


@pytest.fixture(scope="module")
def pot():
    hp = parse_model({"kind": "sevennet"}).potential_hparams(members=1, seeds=[0])
    hp.pop("backbone")
    return SevenNetPotential(**hp).eval()


@pytest.fixture(scope="module")
def calc():
    return SevenNetCalculator("7net-0", device="cpu")


def _structure(a: Atoms) -> Structure:
    return Structure(numbers=a.numbers, positions=a.positions, cell=np.array(a.cell), pbc=np.array(a.pbc))


def _reference(calc, atoms: Atoms) -> dict:
    """SevenNet's own energy, forces and stress, in kcal/mol and Å."""
    a = atoms.copy()
    a.calc = calc
    out = {"energy": a.get_potential_energy() * EV, "forces": a.get_forces() * EV}
    if a.pbc.all():
        out["stress"] = voigt_6_to_full_3x3_stress(a.get_stress()) * EV
    return out


def _triclinic_cell() -> Atoms:
    """Si8 (diamond) under a general shear: a triclinic cell (no two angles equal), atoms rattled."""
    a = bulk("Si", "diamond", a=5.43, cubic=True)
    strain = np.array([[1.03, 0.06, 0.02], [0.0, 0.97, 0.05], [0.04, 0.0, 1.01]])
    a.set_cell(np.array(a.cell) @ strain, scale_atoms=True)
    a.rattle(0.08, seed=3)
    a[0].symbol, a[5].symbol = "O", "O"  # two elements
    return a


def test_options_and_registration():
    from uqpot.nn.backbone import BACKBONES

    assert BACKBONES["sevennet"] is SevenNetPotential
    m = parse_model({"kind": "sevennet"})
    assert m.checkpoint == "7net-0" and m.cutoff == 5.0
    with pytest.raises(Exception, match="checkpoint"):
        parse_model({"kind": "sevennet", "checkpoint": 7})


def test_molecules_equal_sevennet_calculator(pot, calc):
    """NH3 and ethanol in one batch: energy and forces equal SevenNet's calculator (float32 rounding)."""
    mols = [molecule("NH3"), molecule("CH3CH2OH")]
    for a in mols:
        a.rattle(0.05, seed=1)
    batch = collate([_structure(a) for a in mols], cutoff=pot.cutoff)
    out = {k: v.detach() for k, v in pot(batch, create_graph=False).items()}
    forces = out[F.FORCES].double().numpy()
    start = 0
    for k, a in enumerate(mols):
        ref = _reference(calc, a)
        assert abs(float(out[F.ENERGY][k]) - ref["energy"]) < 1e-6 * abs(ref["energy"]) + 1e-4
        f = forces[start:start + len(a)]
        np.testing.assert_allclose(f, ref["forces"], rtol=0, atol=1e-4 * max(1.0, np.abs(ref["forces"]).max()))
        start += len(a)
    assert out[F.ENERGY].dtype == torch.float64


def test_triclinic_cell_equals_sevennet_calculator(pot, calc):
    """A triclinic periodic cell: energy, forces and stress σ = (1/V) ∂E/∂ε equal SevenNet's calculator."""
    a = _triclinic_cell()
    angles = a.cell.angles()
    assert len({round(x, 3) for x in angles}) == 3 and all(abs(x - 90) > 1 for x in angles)
    ref = _reference(calc, a)
    out = pot(collate([_structure(a)], cutoff=pot.cutoff), compute_stress=True, create_graph=False)
    assert abs(float(out[F.ENERGY][0]) - ref["energy"]) < 1e-6 * abs(ref["energy"]) + 1e-4
    fmax = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(out[F.FORCES].detach().double().numpy(), ref["forces"], rtol=0, atol=1e-4 * fmax)
    smax = np.abs(ref["stress"]).max()
    assert smax > 1.0  # a strained cell: the comparison is not of zeros
    np.testing.assert_allclose(out[F.STRESS][0].detach().double().numpy(), ref["stress"], rtol=0, atol=1e-4 * smax)


def test_features_and_last_layer(pot):
    """ξ is the input of SevenNet's reduce_input_to_hidden (128 scalars); the atomic energy is SevenNet's
    last linear map of h̃ (LLPR's last layer), and the energy is the atomic energies plus e_ref(Z)."""
    a = molecule("CH3CH2OH")
    batch = collate([_structure(a)], cutoff=pot.cutoff)
    out = pot(batch, create_graph=False)
    assert out[F.FEATURES].shape == (len(a), pot.hparams["features"]) and pot.hparams["features"] == 128
    ll = pot.last_layer_features(out)
    assert ll.shape == (len(a), pot.last_layer_dim) and out[LAST_LAYER].shape == ll.shape
    readout = pot._template[0].net._modules["reduce_hidden_to_energy"].linear
    with torch.no_grad():
        linear = readout(ll.detach()).squeeze(-1)
    torch.testing.assert_close(linear, out[F.ATOMIC_ENERGY].detach(), rtol=1e-5, atol=1e-4)
    e = out[F.ATOMIC_ENERGY].detach().double().sum() + pot.reference_energy(batch)[0]
    assert abs(float(e) - float(out[F.ENERGY])) < 1e-3
    # SevenNet's per-element shift became the reference energies (eV -> kcal/mol); the network's is zero
    assert float(pot.energy_scale) == pytest.approx(EV)
    assert pot.atomref[[1, 6, 8]].abs().min() > 1.0
    assert not torch.isnan(out[F.FEATURES]).any()


def test_parameter_blocks_follow_sevennets_modules(pot):
    """Five interaction blocks between the embedding and the readout (reduce_input_to_hidden,
    reduce_hidden_to_energy, the per-element scale): what fine-tuning freezes by (uqpot.fit.finetune)."""
    blocks = pot.parameter_blocks()
    assert [n for n, _ in blocks] == ["embedding"] + [f"interaction {k}" for k in range(1, 6)] + ["readout"]
    names = [n for _, ns in blocks for n in ns]
    assert sorted(names) == sorted(n for n, _ in pot.named_parameters()) and len(set(names)) == len(names)
    params = dict(pot.named_parameters())
    assert sum(params[n].numel() for n in dict(blocks)["readout"]) == 8192 + 64 + 178
    assert all("__2_" in n for n in dict(blocks)["interaction 3"])


def test_model_file_round_trip(pot, tmp_path):
    """The model file holds the state dict and plain settings; loading it rebuilds the same network."""
    path = modelfile.save(pot, tmp_path / "sevennet.pt")
    hp = modelfile.read(path)["hparams"]
    assert hp["backbone"] == "sevennet" and hp["checkpoint"] == "7net-0" and isinstance(hp["sevennet"], dict)
    again = uqpot.load(path)
    assert type(again) is SevenNetPotential and again.elements() == pot.elements()
    a = _triclinic_cell()
    batch = collate([_structure(a)], cutoff=pot.cutoff)
    x, y = pot(batch, create_graph=False), again(batch, create_graph=False)
    for key in (F.ENERGY, F.FEATURES):
        torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)
    # forces: the order of CPU scatter sums varies between calls (the same model differs by ~1e-5 too)
    torch.testing.assert_close(x[F.FORCES], y[F.FORCES], rtol=1e-5, atol=1e-4)


def test_convert_a_checkpoint_file(pot, tmp_path):
    """``uqpot convert`` reads a SevenNet checkpoint file only with --trusted (a pickle: refused before it is
    unpickled otherwise), checks it against SevenNet's calculator and writes a uqpot model file that predicts
    what the packaged checkpoint's backbone predicts."""
    import shutil

    from click.testing import CliRunner

    from uqpot.cli.main import cli
    from uqpot.nn.sevennet import checkpoint_path
    from uqpot.nn.sevennet_file import is_sevennet_checkpoint, is_sevennet_source

    src = tmp_path / "checkpoint_best.pth"
    shutil.copy(checkpoint_path("7net-0"), src)
    assert is_sevennet_checkpoint(src) and is_sevennet_source("7net-0") and not is_sevennet_source(tmp_path / "x.pth")
    out = tmp_path / "mine.pt"
    r = CliRunner().invoke(cli, ["convert", str(src), "--out", str(out)])
    assert r.exit_code != 0 and "--trusted" in r.output and "pickle" in r.output and not out.exists()
    r = CliRunner().invoke(cli, ["convert", str(src), "--trusted", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "SevenNet model: 89 elements, cutoff 5 Å" in r.output and out.is_file()
    assert not is_sevennet_checkpoint(out)  # a uqpot model file: no pickle of SevenNet's settings
    converted = uqpot.load(out)
    assert modelfile.read(out)["extra"]["converted_from"]["file"] == src.name
    a = molecule("CH3CH2OH")
    batch = collate([_structure(a)], cutoff=pot.cutoff)
    x, y = pot(batch, create_graph=False), converted(batch, create_graph=False)
    torch.testing.assert_close(x[F.ENERGY], y[F.ENERGY], rtol=0, atol=1e-9)
    torch.testing.assert_close(x[F.FORCES], y[F.FORCES], rtol=1e-5, atol=1e-4)


@pytest.mark.slow  # about 3 minutes: every command builds SevenNet-0 again (about 20 s each on one core)
def test_wrap_sevennet_with_gmm_and_llpr(tmp_path, ammonia):
    """The foundation model with a post-hoc uncertainty: ``uqpot convert 7net-0`` (a checkpoint sevenn ships:
    no --trusted), then ``uqpot wrap --method gmm`` and ``--method llpr`` fitted on NH3 structures near the
    minimum.  The wrapped models predict what the backbone predicts, and their U is larger on distorted NH3
    (more than 20 kcal/mol above the minimum) than on the held-out near-minimum structures."""
    from click.testing import CliRunner

    from uqpot.cli.main import cli
    from uqpot.data.io import write_extxyz

    e = ammonia.energies()
    near, far = np.nonzero(e < 5.0)[0], np.nonzero(e > 20.0)[0]
    assert len(near) >= 30 and len(far) >= 8
    write_extxyz(ammonia.subset(near[:20]), tmp_path / "train.extxyz")
    write_extxyz(ammonia.subset(near[20:30]), tmp_path / "val.extxyz")
    base = tmp_path / "7net0.pt"
    r = CliRunner().invoke(cli, ["convert", "7net-0", "--out", str(base)])
    assert r.exit_code == 0, r.output
    held, distorted = ammonia.subset(near[20:30]), ammonia.subset(far[:8])
    plain = uqpot.load(base)
    for method in ("gmm", "llpr"):
        out = tmp_path / f"7net0_{method}.pt"
        r = CliRunner().invoke(cli, ["wrap", str(base), "--method", method, "--data", str(tmp_path / "train.extxyz"),
                                     "--val", str(tmp_path / "val.extxyz"), "--out", str(out)])
        assert r.exit_code == 0, r.output
        model = uqpot.load(out)
        u = {}
        for name, ds in (("held", held), ("distorted", distorted)):
            batch = collate(list(ds), cutoff=model.cutoff)
            res = model(batch, create_graph=False)
            ref = plain(batch, create_graph=False)
            torch.testing.assert_close(res[F.ENERGY], ref[F.ENERGY], rtol=0, atol=1e-6)
            u[name] = res[F.UNCERTAINTY].detach().double()
            assert torch.isfinite(u[name]).all()
            assert method == "gmm" or (u[name] >= 0).all()  # GMM's U is a negative log-likelihood
        assert float(u["distorted"].mean()) > float(u["held"].mean()), (method, u)


def test_fresh_readout_gives_each_seed_its_own_linear_maps(pot):
    """finetune.readout: reinit on SevenNet: the two linear maps of the readout are drawn anew per seed
    (sevenn's own initialisation, reproducible from the seed); the per-element scale, a fit to SevenNet's
    data and not an initialisation, is not among them."""
    fresh = pot.fresh_readout([1, 2])
    again = pot.fresh_readout([2])
    params = dict(pot.named_parameters())
    assert sorted(fresh) == sorted(n for n in dict(pot.parameter_blocks())["readout"] if "reduce_" in n)
    assert sum(v[0].numel() for v in fresh.values()) == 8192 + 64
    for name, value in fresh.items():
        assert value.shape == (2, *params[name].shape[1:])
        assert not torch.equal(value[0], value[1]) and not torch.equal(value[0], params[name][0].detach())
        torch.testing.assert_close(value[1], again[name][0], rtol=0, atol=0)
