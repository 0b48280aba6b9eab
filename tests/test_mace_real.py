"""``uqpot convert`` on the files MACE's own training script writes.

Every case runs ``mace_run_train`` (mace-torch's console script, in this interpreter) on a few ethanol frames
labelled by ASE's EMT (eV, eV/Å, as MACE expects), converts the ``.model`` file it writes with
``uqpot convert FILE --trusted --out x.pt`` (``--head NAME`` for a multi-head file), and compares the
converted model (uqpot's ASE calculator, eV and eV/Å) with MACE's own calculator (``MACECalculator``, its own
neighbour list and graph) on three molecules and a triclinic periodic cell (energy, forces, and the stress of
the cell).  Tolerances: relative 1e-8 in float64, 1e-5 in float32, of the largest magnitude of each quantity.

Cases (``mace_run_train`` writes a ``ScaleShiftMACE`` for ``--model MACE`` and for ``--model ScaleShiftMACE``):
``--model MACE --max_L 0`` and ``--model ScaleShiftMACE --max_L 1``, float64 and float32; two heads trained
from scratch (``--heads``, a training file per head); multi-head fine-tuning of a model written by the
script (``--foundation_model FILE --multiheads_finetuning True --pt_train_file``: heads ``pt_head`` and
``Default``, MACE's own fine-tuning route, here with a local foundation file instead of a downloaded one);
that file reduced to one head by ``mace_select_head``; and non-default architecture options.  The default
run trains and converts the issue's failing case (``ScaleShiftMACE``, max_L 1, float64); the rest is
``slow``.  Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if importlib.util.find_spec("mace") is None:  # found, not imported: importing mace changes torch.load
    pytest.skip("mace-torch is not installed (pip install 'uqpot[mace]')", allow_module_level=True)

from support.badinput import assert_user_error, cli  # noqa: E402

UQPOT = [sys.executable, "-m", "uqpot.cli.main"]
#: the script behind the ``mace_run_train`` / ``mace_select_head`` console scripts, in this interpreter
MACE_RUN_TRAIN = [sys.executable, "-m", "mace.cli.run_train"]
MACE_SELECT_HEAD = [sys.executable, "-m", "mace.cli.select_head"]
#: a tiny network (the issue's 16 channels), one epoch, CPU; the rest of the options are per case
TINY = ["--num_channels", "16", "--r_max", "4.0", "--num_interactions", "2", "--correlation", "2",
        "--radial_MLP", "[16]", "--max_num_epochs", "1", "--batch_size", "4", "--valid_fraction", "0.25",
        "--device", "cpu", "--seed", "1", "--plot", "False", "--num_workers", "0", "--pin_memory", "False"]
TOL = {"float64": 1e-8, "float32": 1e-5}


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return env


def write_frames(path: Path, n: int, seed: int) -> Path:
    """``n`` rattled ethanol molecules labelled by ASE's EMT, in MACE's default keys (REF_energy in eV,
    REF_forces in eV/Å)."""
    import ase.io
    from ase.build import molecule
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(0.0, 0.08, a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = None
        a.info["REF_energy"] = e
        a.arrays["REF_forces"] = f
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    return path


def run_train(work: Path, name: str, *args: str) -> Path:
    """Runs MACE's training script in ``work``; the ``.model`` file it writes."""
    work.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(MACE_RUN_TRAIN + ["--name", name, "--work_dir", str(work), *TINY, *args], cwd=work,
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    model = work / f"{name}.model"
    assert model.is_file(), sorted(p.name for p in work.iterdir())
    return model


def convert(model: Path, out: Path, head: str | None = None) -> Path:
    """``uqpot convert MODEL --trusted --out OUT [--head HEAD]`` as a user runs it."""
    r = subprocess.run(UQPOT + ["convert", str(model), "--trusted", "--out", str(out)]
                       + (["--head", head] if head else []), capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and r.stderr.strip() == "", r.stderr  # nothing on stderr: no warnings either
    return out


def structures():
    """Three molecules of the model's elements (H, C, O) and a triclinic periodic cell smaller than twice
    the 4 Å cutoff (atoms interact with their own images)."""
    from ase import Atoms
    from ase.build import molecule

    out = []
    for name, seed in (("CH3CH2OH", 3), ("CH3OH", 4), ("CH3COOH", 5)):
        a = molecule(name)
        a.rattle(0.05, seed=seed)
        out.append((name, a))
    rng = np.random.default_rng(6)
    cell = np.array([[5.6, 0.0, 0.0], [1.1, 5.9, 0.0], [-0.7, 0.9, 6.2]])
    eth = molecule("CH3CH2OH")
    eth.positions += rng.normal(0.0, 0.05, eth.positions.shape) + cell.sum(0) / 2 - eth.positions.mean(0)
    out.append(("triclinic", Atoms(eth.numbers, eth.positions, cell=cell, pbc=True)))
    return out


def mace_calculator(model: Path, dtype: str, head: str | None):
    """MACE's own ASE calculator on the file (read here with ``weights_only=False``: the test wrote it; MACE's
    ``model_paths=`` would rely on the variable ``import mace`` sets, which uqpot takes back)."""
    from mace.calculators import MACECalculator

    prior = torch.get_default_dtype()
    try:
        net = torch.load(model, map_location="cpu", weights_only=False)
        return MACECalculator(models=net, device="cpu", default_dtype=dtype, **({"head": head} if head else {}))
    finally:
        torch.set_default_dtype(prior)


def compare(model: Path, converted: Path, dtype: str, head: str | None = None) -> dict:
    """Max differences (eV, eV/Å, eV/Å³) of the converted model against MACE's calculator on
    :func:`structures`, asserted within ``TOL[dtype]`` relative; returns them with MACE's energies."""
    from uqpot.md.calculator import UQPotCalculator
    from uqpot.evaluation.models import load

    theirs = mace_calculator(model, dtype, head)
    ours_model = load(converted)
    assert str(ours_model.dtype).endswith(dtype)
    ours = UQPotCalculator(ours_model)  # eV and eV/Å, converted from uqpot's kcal/mol by uqpot.core.units
    tol = TOL[dtype]
    diffs = {"energy": 0.0, "forces": 0.0, "stress": 0.0, "energies": {}}
    for name, atoms in structures():
        props = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
        a, b = atoms.copy(), atoms.copy()
        theirs.calculate(a, props)
        ours.calculate(b, props)
        e_t, e_o = theirs.results["energy"], ours.results["energy"]
        f_t, f_o = np.asarray(theirs.results["forces"]), np.asarray(ours.results["forces"])
        assert np.abs(f_t).max() > 1e-3  # not a comparison of zeros
        de, df = abs(e_o - e_t), float(np.abs(f_o - f_t).max())
        assert de <= tol * max(abs(e_t), 1.0), (name, e_o, e_t)
        assert df <= tol * max(float(np.abs(f_t).max()), 1.0), (name, df)
        diffs["energy"], diffs["forces"] = max(diffs["energy"], de), max(diffs["forces"], df)
        diffs["energies"][name] = e_t
        if "stress" in props:
            s_t, s_o = np.asarray(theirs.results["stress"]), np.asarray(ours.results["stress"])
            ds = float(np.abs(s_o - s_t).max())
            assert np.abs(s_t).max() > 1e-6 and ds <= tol * max(float(np.abs(s_t).max()), 1e-2), (name, ds)
            diffs["stress"] = max(diffs["stress"], ds)
    print(f"{model.name} {dtype} head {head}: max |dE| {diffs['energy']:.3g} eV, |dF| {diffs['forces']:.3g} eV/Å, "
          f"|dS| {diffs['stress']:.3g} eV/Å³")
    return diffs


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Training frames: one file for single-head training, two others for the heads of a multi-head model."""
    d = tmp_path_factory.mktemp("frames")
    return {"all": write_frames(d / "all.xyz", 20, 0), "a": write_frames(d / "a.xyz", 12, 1),
            "b": write_frames(d / "b.xyz", 12, 2)}


@pytest.fixture(scope="module")
def issue_case(frames, tmp_path_factory):
    """The issue's failing file: ``--model ScaleShiftMACE --max_L 1``, float64, ``--E0s average``."""
    work = tmp_path_factory.mktemp("scaleshift_L1_f64")
    return run_train(work, "ss", "--train_file", str(frames["all"]), "--model", "ScaleShiftMACE", "--max_L", "1",
                     "--E0s", "average", "--default_dtype", "float64")


def test_issue_case_converts_and_equals_mace_calculator(issue_case, tmp_path):
    """The file of the issue (E0 as a (1, 3) array, scale (1,), shift a scalar) converts, and the converted
    model gives MACE's energies, forces and stress."""
    net = torch.load(issue_case, map_location="cpu", weights_only=False)
    assert type(net).__name__ == "ScaleShiftMACE" and net.heads == ["Default"]
    assert tuple(net.atomic_energies_fn.atomic_energies.shape) == (1, 3)  # the layout the converter missed
    assert tuple(net.scale_shift.scale.shape) == (1,) and net.scale_shift.shift.dim() == 0
    conv = convert(issue_case, tmp_path / "x.pt")
    compare(issue_case, conv, "float64")
    from uqpot.nn import modelfile

    payload = modelfile.read(conv)
    assert payload["extra"]["converted_from"]["head"] == "Default"
    # uqpot's float64 reference energies are MACE's E0 in kcal/mol
    from uqpot.core.units import EV_TO_KCAL_PER_MOL

    e0 = net.atomic_energies_fn.atomic_energies.detach().double()[0].numpy()
    np.testing.assert_allclose(payload["state_dict"]["atomref"][[1, 6, 8]].numpy(), e0 * EV_TO_KCAL_PER_MOL,
                               rtol=1e-15)


def test_files_mace_writes_beside_the_model_are_refused_in_one_line(issue_case, tmp_path):
    """MACE's TorchScript ``_compiled.model`` and its checkpoint (weights without the architecture): one line,
    exit 2, nothing written; the TorchScript file is recognised before anything in it is loaded."""
    compiled = issue_case.with_name("ss_compiled.model")
    assert compiled.is_file()
    r = cli("convert", compiled, "--trusted", "--out", tmp_path / "c.pt")
    assert_user_error(r, f"error: {compiled}: a TorchScript file", "convert the <name>.model file")
    assert not (tmp_path / "c.pt").exists()
    checkpoint = next((issue_case.parent / "checkpoints").glob("*.pt"))
    r = cli("convert", checkpoint, "--trusted", "--out", tmp_path / "k.pt")
    assert_user_error(r, str(checkpoint), "holding a dict")
    assert not (tmp_path / "k.pt").exists()


SINGLE = {  # id: (mace_run_train arguments, dtype)
    "MACE-L0-f64": (["--model", "MACE", "--max_L", "0"], "float64"),
    "MACE-L0-f32": (["--model", "MACE", "--max_L", "0"], "float32"),
    "ScaleShiftMACE-L1-f32": (["--model", "ScaleShiftMACE", "--max_L", "1"], "float32"),
    "MACE-L1-f64": (["--model", "MACE", "--max_L", "1"], "float64"),
    # non-default architecture options the script offers for these classes (not --radial_type gaussian or
    # chebyshev: mace-torch 0.3.16's script fails on them before it writes the model, in
    # extract_config_mace_model, which reads bessel_weights)
    "ScaleShiftMACE-options-f64": (["--model", "ScaleShiftMACE", "--max_L", "1", "--num_interactions", "3",
                                    "--interaction", "RealAgnosticResidualNonLinearInteractionBlock",
                                    "--pair_repulsion",
                                    "--distance_transform", "Agnesi", "--MLP_irreps", "8x0e",
                                    "--gate", "tanh"], "float64"),
    "MACE-last-readout-only-f32": (["--model", "MACE", "--max_L", "1", "--use_last_readout_only", "True",
                                    "--scaling", "no_scaling"], "float32"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SINGLE))
def test_single_head_files_equal_mace_calculator(case, frames, tmp_path):
    args, dtype = SINGLE[case]
    model = run_train(tmp_path / "train", "m", "--train_file", str(frames["all"]), "--E0s", "average",
                      "--default_dtype", dtype, *args)
    assert str(next(torch.load(model, map_location="cpu", weights_only=False).parameters()).dtype).endswith(dtype)
    compare(model, convert(model, tmp_path / "x.pt"), dtype)


def _heads_arg(frames) -> str:
    return repr({"water": {"train_file": str(frames["a"]), "E0s": "average"},
                 "ethanol": {"train_file": str(frames["b"]), "E0s": "average"}})


@pytest.mark.slow
@pytest.mark.parametrize("model_cls, max_l, dtype", [("MACE", "0", "float32"), ("ScaleShiftMACE", "1", "float64")])
def test_two_heads_from_scratch_each_head_equals_mace_calculator(model_cls, max_l, dtype, frames, tmp_path):
    """``--heads`` with a training file per head (E0 (2, 3), scale and shift (2,)): each head converts with
    ``--head NAME`` and equals MACE's calculator on that head; the two heads differ; no head: an error."""
    model = run_train(tmp_path / "train", "mh", "--heads", _heads_arg(frames), "--model", model_cls,
                      "--max_L", max_l, "--default_dtype", dtype)
    net = torch.load(model, map_location="cpu", weights_only=False)
    assert net.heads == ["water", "ethanol"] and tuple(net.atomic_energies_fn.atomic_energies.shape) == (2, 3)
    energies = {h: compare(model, convert(model, tmp_path / f"{h}.pt", head=h), dtype, head=h)["energies"]
                for h in net.heads}
    gap = max(abs(energies["water"][k] - energies["ethanol"][k]) for k in energies["water"])
    assert gap > 1e3 * TOL[dtype] * max(abs(v) for v in energies["water"].values())  # heads are not confused
    r = cli("convert", model, "--trusted", "--out", tmp_path / "none.pt")
    assert_user_error(r, "choose one with --head", "water", "ethanol")
    r = cli("convert", model, "--trusted", "--head", "Default", "--out", tmp_path / "none.pt")
    assert_user_error(r, "--head 'Default'")
    assert not (tmp_path / "none.pt").exists()


@pytest.mark.slow
def test_multihead_finetuning_and_select_head_equal_mace_calculator(issue_case, frames, tmp_path):
    """MACE's multi-head fine-tuning of a model its script wrote (heads pt_head and Default, E0 from the
    foundation model), each head against MACE's calculator; then ``mace_select_head`` reduces it to the
    Default head (E0 (1, 3), a scalar scale and shift), which converts without --head."""
    model = run_train(tmp_path / "ft", "ft", "--foundation_model", str(issue_case), "--train_file", str(frames["b"]),
                      "--pt_train_file", str(frames["a"]), "--multiheads_finetuning", "True", "--E0s", "foundation",
                      "--num_samples_pt", "8", "--model", "MACE", "--default_dtype", "float64")
    net = torch.load(model, map_location="cpu", weights_only=False)
    assert sorted(net.heads) == ["Default", "pt_head"]
    for h in net.heads:
        compare(model, convert(model, tmp_path / f"{h}.pt", head=h), "float64", head=h)
    single = tmp_path / "ft_default.model"
    r = subprocess.run(MACE_SELECT_HEAD + ["--head_name", "Default", "--output_file", str(single), str(model)],
                       capture_output=True, text=True, env=_env())
    assert r.returncode == 0, r.stderr[-2000:]
    sel = torch.load(single, map_location="cpu", weights_only=False)
    assert sel.heads == ["Default"] and sel.scale_shift.scale.dim() == 0
    compare(single, convert(single, tmp_path / "sel.pt"), "float64")


@pytest.mark.slow
def test_lora_finetuned_float32_file_equals_mace_calculator(issue_case, frames, tmp_path):
    """Single-head fine-tuning of a float64 model written by the script, with LoRA (merged into the weights
    when MACE saves the model), written in float32: converts and equals MACE's calculator."""
    model = run_train(tmp_path / "lora", "lora", "--foundation_model", str(issue_case), "--train_file",
                      str(frames["b"]), "--multiheads_finetuning", "False", "--lora", "True", "--E0s", "foundation",
                      "--model", "MACE", "--default_dtype", "float32")
    net = torch.load(model, map_location="cpu", weights_only=False)
    assert net.heads == ["Default"] and next(net.parameters()).dtype == torch.float32
    compare(model, convert(model, tmp_path / "x.pt"), "float32")


def _hand_built(cls_name: str, heads: list[str], e0: np.ndarray):
    """A MACE module of class ``cls_name`` built directly (MACE's script never writes a plain ``MACE``; a user
    who builds one, or an older script, does), saved as MACE saves models (a pickled module)."""
    from uqpot.nn.mace import import_mace

    modules = import_mace()  # first: it lets e3nn load its constants with weights_only
    from e3nn import o3
    torch.manual_seed(3)
    kw = dict(r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=1,
              interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
              interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"], num_interactions=2,
              num_elements=3, hidden_irreps=o3.Irreps("4x0e+4x1o"), MLP_irreps=o3.Irreps("4x0e"),
              atomic_energies=e0, avg_num_neighbors=5.0, atomic_numbers=[1, 6, 8], correlation=2,
              gate=torch.nn.functional.silu, radial_MLP=[16], heads=heads)
    cls = getattr(modules, cls_name)
    if cls_name == "EnergyDipolesMACE":
        kw.pop("heads")
    return cls(**kw).to(torch.float64)


def test_plain_mace_class_converts_with_identity_scale_shift(tmp_path):
    """A plain ``MACE`` module (no scale-shift) with two heads converts as a ScaleShiftMACE with scale 1 and
    shift 0 per head; its second head equals MACE's calculator on that head (a (heads, elements) E0 row and
    the readouts' second output: the head index reaches every per-head part)."""
    net = _hand_built("MACE", ["a", "b"], np.array([[-0.5, -1.5, -2.5], [-0.4, -1.2, -2.1]]))
    path = tmp_path / "plain.model"
    torch.save(net, path)
    r = cli("convert", path, "--trusted", "--out", tmp_path / "b.pt", "--head", "b")
    assert r.exit_code == 0, r.output
    compare(path, tmp_path / "b.pt", "float64", head="b")


def test_unsupported_mace_class_is_refused_by_name(tmp_path):
    """A MACE class the converter cannot rebuild (here EnergyDipolesMACE: energy and dipole readouts) is
    refused in one line naming the class, nothing written."""
    net = _hand_built("EnergyDipolesMACE", ["Default"], np.array([-0.5, -1.5, -2.5]))
    path = tmp_path / "dipoles.model"
    torch.save(net, path)
    r = cli("convert", path, "--trusted", "--out", tmp_path / "x.pt")
    assert_user_error(r, str(path), "MACE model class EnergyDipolesMACE is not supported")
    assert not (tmp_path / "x.pt").exists()
