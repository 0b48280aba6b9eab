"""The batched MD engine against ASE's integrators, energy conservation, batching invariance, failure handling,
neighbour-list skin/replay and periodic wrapping.  Real ASE and torch, analytic (Morse) or small random
PaiNN potentials."""

import warnings

import numpy as np
import pytest
import torch
from ase import units as ase_units
from ase.data import atomic_masses
from ase.md.langevin import Langevin
from ase.md.nose_hoover_chain import NoseHooverChainNVT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from uqpot.core import units
from uqpot.systems import get_system
from uqpot.data.batch import collate
from uqpot.data.structures import Structure
from uqpot.md.analytic import MorseCalculator, MorsePotential
from uqpot.md.batched import BatchedMD, gaussian_noise, maxwell_boltzmann
from uqpot.md.neb import nh3_pyramid
from uqpot.md.stability import StabilityCriteria
from uqpot.nn.potential import Potential
from conftest import silica_like

VEL = ase_units.Angstrom / ase_units.fs  # 1 Å/fs in ASE's velocity unit


def nh3(seed=0, rattle=0.05):
    a = nh3_pyramid()
    a.rattle(rattle, seed=seed)
    return a


def small_painn(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = Potential(features=16, interactions=2, rbf=8, readout_hidden=16)
    return m.to(dtype).eval()


# ------------------------------------------------------------------------------------------ units
def test_md_unit_constants_match_ase():
    kcal_mol = ase_units.kcal / ase_units.mol  # in eV
    # acceleration of 1 kcal/mol/Å on 1 amu, in Å/fs²
    assert units.FORCE_TO_ACCELERATION == pytest.approx(kcal_mol * ase_units.fs ** 2, rel=1e-12)
    assert units.FORCE_TO_ACCELERATION == pytest.approx(4.184e-4, rel=1e-9)
    assert units.MV2_TO_KCAL_PER_MOL * units.FORCE_TO_ACCELERATION == pytest.approx(1.0)
    assert units.KB_KCAL_PER_MOL_K == pytest.approx(ase_units.kB / kcal_mol, rel=1e-12)
    assert units.time_factor("ps") == 1000.0 and units.time_factor("ns") == 1e6
    with pytest.raises(units.UnitError):
        units.time_factor("min")
    # ½ m v² of one amu at 1 Å/fs, and T of 3 dof with that energy
    ke = units.kinetic_energy_kcal_per_mol(np.array([1.0]), np.array([[1.0, 0.0, 0.0]]))
    assert ke == pytest.approx(0.5 * units.MV2_TO_KCAL_PER_MOL)
    assert units.temperature_from_kinetic_energy(1.5 * units.KB_KCAL_PER_MOL_K * 300.0, 3) == pytest.approx(300.0)


def test_maxwell_boltzmann_is_ase_draw():
    a = nh3()
    thermalize_momenta(a, temperature_K=500.0, rng=np.random.default_rng(42))
    v = maxwell_boltzmann(atomic_masses[a.numbers], 500.0, 42, remove_com=False)
    np.testing.assert_allclose(v * VEL, a.get_velocities(), rtol=1e-12)
    v0 = maxwell_boltzmann(atomic_masses[a.numbers], 500.0, 42)
    np.testing.assert_allclose((atomic_masses[a.numbers][:, None] * v0).sum(0), 0.0, atol=1e-12)


# ------------------------------------------------------------------------------------------ vs ASE
def _ase_run(atoms, v0, dyn_factory, n):
    a = atoms.copy()
    a.calc = MorseCalculator()
    a.set_velocities(v0 * VEL)
    dyn = dyn_factory(a)
    dyn.run(n)
    return a, dyn


def test_nose_hoover_chain_matches_ase():
    """50 steps of two replicas (different structures and temperatures) in one batch vs ASE's
    NoseHooverChainNVT, float64: positions to 1e-6 Å (found: ~1e-15)."""
    starts, temps = [nh3(1), nh3(2)], [300.0, 1000.0]
    vs = [maxwell_boltzmann(atomic_masses[a.numbers], T, 5 + k) for k, (a, T) in enumerate(zip(starts, temps))]
    md = BatchedMD(MorsePotential(), starts, timestep_fs=0.5, temperatures_K=temps, velocities=vs, tdamp_fs=10.0,
                   check_every=7, record_every=10, dtype="float64")
    res = md.run(50)
    assert md.model_calls == 51  # one per step (+ the initial forces)
    for k, (a0, T) in enumerate(zip(starts, temps)):
        a, dyn = _ase_run(a0, vs[k], lambda at: NoseHooverChainNVT(at, timestep=0.5 * ase_units.fs, temperature_K=T,
                                                                   tdamp=10.0 * ase_units.fs, tchain=3), 50)
        rec = res.replicas[k]
        assert np.abs(rec.final_positions - a.positions).max() < 1e-6
        assert np.abs(rec.final_velocities - a.get_velocities() / VEL).max() < 1e-8
        # conserved quantity of the chain, in kcal/mol
        assert rec.conserved[-1] == pytest.approx(dyn.get_conserved_energy() * units.EV_TO_KCAL_PER_MOL, abs=1e-8)


def test_langevin_matches_ase_with_same_noise():
    """ASE's Langevin fed the engine's counter-based noise reproduces the batched trajectory."""

    class FeedRng:  # ASE draws xi then eta, each (n, 3), every step
        def __init__(self, seed, n):
            self.seed, self.n, self.step, self.queue = seed, n, 0, []

        def standard_normal(self, size):
            if not self.queue:
                z = gaussian_noise(torch.full((self.n,), self.seed), self.step, torch.arange(self.n)).numpy()
                self.queue, self.step = [z[0], z[1]], self.step + 1
            out = self.queue.pop(0)
            assert out.shape == tuple(size)
            return out

    starts, seeds = [nh3(3), nh3(4)], [11, 12]
    vs = [maxwell_boltzmann(atomic_masses[a.numbers], 500.0, s) for a, s in zip(starts, seeds)]
    md = BatchedMD(MorsePotential(), starts, timestep_fs=0.5, temperatures_K=500.0, seeds=seeds, velocities=vs,
                   thermostat="langevin", friction_per_fs=0.02, check_every=10)
    res = md.run(50)
    for k in range(2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            a, _ = _ase_run(starts[k], vs[k], lambda at: Langevin(
                at, timestep=0.5 * ase_units.fs, temperature_K=500.0, friction=0.02 / ase_units.fs, fixcm=False,
                rng=FeedRng(seeds[k], 4)), 50)
        assert np.abs(res.replicas[k].final_positions - a.positions).max() < 1e-6


def test_nve_matches_ase_velocity_verlet():
    a0 = nh3(5)
    v0 = maxwell_boltzmann(atomic_masses[a0.numbers], 800.0, 3)
    res = BatchedMD(MorsePotential(), [a0], timestep_fs=0.5, thermostat="nve", velocities=[v0]).run(50)
    a, _ = _ase_run(a0, v0, lambda at: VelocityVerlet(at, timestep=0.5 * ase_units.fs), 50)
    assert np.abs(res.replicas[0].final_positions - a.positions).max() < 1e-6


def test_gaussian_noise_statistics_and_invariance():
    seeds = torch.arange(200) % 7
    z = gaussian_noise(seeds, 3, torch.arange(200) // 7)  # (2, 200, 3): 1200 numbers
    big = torch.cat([gaussian_noise(torch.full((500,), s), k, torch.arange(500)).flatten()
                     for s, k in [(0, 0), (1, 0), (0, 1), (2**40 + 5, 2**33)]])
    n = big.numel()
    assert abs(float(big.mean())) < 5 / n ** 0.5
    assert abs(float(big.var()) - 1.0) < 0.05
    assert abs(float((big ** 4).mean()) - 3.0) < 0.3  # Gaussian kurtosis
    # different seeds, steps, atoms and streams are uncorrelated
    a = gaussian_noise(torch.zeros(2000, dtype=torch.int64), 0, torch.arange(2000))
    b = gaussian_noise(torch.ones(2000, dtype=torch.int64), 0, torch.arange(2000))
    c = gaussian_noise(torch.zeros(2000, dtype=torch.int64), 1, torch.arange(2000))
    for x, y in [(a[0], b[0]), (a[0], c[0]), (a[0], a[1])]:
        r = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
        assert abs(r) < 0.05
    # an atom's numbers depend only on (seed, step, atom index), not on the batch around it
    np.testing.assert_array_equal(z[:, :1].numpy(), gaussian_noise(seeds[:1], 3, torch.tensor([0])).numpy())
    assert z.dtype == torch.float64 and torch.isfinite(z).all()


# ------------------------------------------------------------------------------------------ NVE conservation
@pytest.mark.slow  # test_nve_matches_ase_velocity_verlet covers the integrator by default
def test_nve_energy_conservation_10000_steps():
    """10,000 steps (5 ps at 0.5 fs) of NH3 (~250 K) on the Morse reference, float64, velocity Verlet.
    Measured: drift (slope of a linear fit of E_total(t)) −3e-4 kcal/mol/ps, fluctuation (std) 0.020
    kcal/mol out of a mean kinetic energy of 3.0 kcal/mol (range 0.09); bounds 5e-3 kcal/mol/ps and 0.05.
    (The fluctuation is velocity Verlet's and scales as dt²; ASE's VelocityVerlet shows the same.)"""
    md = BatchedMD(MorsePotential(), [nh3(7)], timestep_fs=0.5, thermostat="nve", temperatures_K=300.0, seeds=9,
                   check_every=1000, record_every=10, skin=2.0)
    rec = md.run(10_000).replicas[0]
    e = np.array(rec.conserved)
    assert rec.stable and len(e) == 1001
    t_ps = np.arange(len(e)) * 10 * 0.5e-3
    slope = np.polyfit(t_ps, e, 1)[0]
    assert abs(slope) < 5e-3
    assert e.std() < 0.05 and e.max() - e.min() < 0.2
    assert np.mean(rec.temperature) > 100.0  # it really moved


# ------------------------------------------------------------------------------------------ batching
@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
def test_replicas_in_one_batch_equal_single_runs(thermostat):
    """Three replicas (different starts, temperatures and seeds) in one batch follow the trajectories they
    follow alone (small random PaiNN, float64)."""
    model = small_painn()
    starts, temps, seeds = [nh3(7), nh3(8, 0.1), nh3(9)], [300.0, 600.0, 900.0], [1, 2, 3]
    kw = dict(timestep_fs=0.5, thermostat=thermostat, check_every=10, record_every=5)
    together = BatchedMD(model, starts, temperatures_K=temps, seeds=seeds, **kw).run(60)
    for k in range(3):
        alone = BatchedMD(model, [starts[k]], temperatures_K=temps[k], seeds=seeds[k], **kw).run(60)
        a, b = together.replicas[k], alone.replicas[0]
        assert np.abs(a.final_positions - b.final_positions).max() < 1e-10
        np.testing.assert_allclose(a.energy, b.energy, atol=1e-9)
        assert a.stable == b.stable and a.failure_step == b.failure_step


def test_failed_replicas_are_removed_and_recorded():
    """A replica far too hot dissociates; it is recorded with its time of failure and removed, the batch
    shrinks and the others go on unchanged."""
    starts, temps = [nh3(10), nh3(11), nh3(12)], [300.0, 300000.0, 500.0]
    crit = get_system("ammonia").stability_criteria(ground_state_energy=None)
    kw = dict(timestep_fs=0.5, seeds=[1, 2, 3], criteria=crit, check_every=10)
    md = BatchedMD(MorsePotential(), starts, temperatures_K=temps, **kw)
    res = md.run(200)
    hot = res.replicas[1]
    assert not hot.stable and hot.reason in ("dissociation", "collision")
    assert 0 < hot.failure_step < 200 and hot.time_to_failure_fs == pytest.approx(0.5 * hot.failure_step)
    assert hot.steps_run == hot.failure_step and hot.record_steps[-1] <= hot.failure_step
    assert md.n_alive == 2 and md.numbers.shape[0] == 8
    assert [r.stable for r in (res.replicas[0], res.replicas[2])] == [True, True]
    assert res.stable_fraction == pytest.approx(2 / 3)
    # the time of failure is exact to the step, whatever the sync interval
    res1 = BatchedMD(MorsePotential(), starts, temperatures_K=temps, **{**kw, "check_every": 1}).run(200)
    assert res1.replicas[1].failure_step == hot.failure_step
    alone = BatchedMD(MorsePotential(), [starts[2]], temperatures_K=temps[2], **{**kw, "seeds": 3}).run(200)
    assert np.abs(alone.replicas[0].final_positions - res.replicas[2].final_positions).max() < 1e-10


@pytest.mark.parametrize("model_kind", ["morse", "painn"])
def test_nan_replica_stops_without_spoiling_others(model_kind):
    """Two atoms on top of each other give NaN forces: that replica stops ("nonfinite", even with no
    criteria configured), the others run on exactly as alone."""
    model = MorsePotential() if model_kind == "morse" else small_painn()
    bad = nh3(13)
    bad.positions[2] = bad.positions[1]
    good = [nh3(14), nh3(15)]
    md = BatchedMD(model, [good[0], bad, good[1]], timestep_fs=0.5, temperatures_K=400.0, seeds=[1, 2, 3],
                   check_every=5)
    res = md.run(30)
    assert not res.replicas[1].stable and res.replicas[1].reason == "nonfinite"
    assert res.replicas[1].failure_step == 0
    for k, s in [(0, 1), (2, 3)]:
        alone = BatchedMD(model, [good[k // 2]], timestep_fs=0.5, temperatures_K=400.0, seeds=s, check_every=5).run(30)
        assert res.replicas[k].stable
        assert np.abs(alone.replicas[0].final_positions - res.replicas[k].final_positions).max() < 1e-10


def test_diverging_replica_mid_run_is_stopped():
    """A replica that blows up during the run (atoms fly apart at 1e7 K) ends as a recorded failure; the
    campaign does not crash even with no criteria but finiteness and a NaN-producing model."""
    model = small_painn(1)
    starts = [nh3(16), nh3(17)]
    md = BatchedMD(model, starts, timestep_fs=2.0, temperatures_K=[300.0, 1e9], seeds=[1, 2], check_every=4,
                   criteria=StabilityCriteria(max_kinetic_energy=1e6))
    res = md.run(40)
    assert not res.replicas[1].stable
    assert res.replicas[0].stable
    assert np.all(np.isfinite(res.replicas[0].final_positions))


def test_uncertainty_energy_and_frames_recorded():
    """U (here the stand-in |F|² of the analytic model), energies and frames every K steps, consistent with
    a fresh evaluation of the stored frames."""
    model = MorsePotential(with_uncertainty=True)
    md = BatchedMD(model, [nh3(18), nh3(19)], timestep_fs=0.5, temperatures_K=[300.0, 600.0], seeds=[4, 5],
                   check_every=10, record_every=5, frame_every=5)
    res = md.run(40)
    for rec in res.replicas:
        assert rec.record_steps == list(range(0, 41, 5)) and rec.frame_steps == rec.record_steps
        assert len(rec.uncertainty) == len(rec.energy) == len(rec.temperature) == 9
        for k in (0, 4, 8):
            s = Structure(numbers=np.array([7, 1, 1, 1]), positions=rec.frames[k], cell=np.zeros((3, 3)),
                          pbc=np.zeros(3, bool))
            out = model(collate([s], cutoff=5.0, dtype="float64"))
            assert float(out["uncertainty"][0].detach()) == pytest.approx(rec.uncertainty[k], rel=1e-10)
            assert float(out["energy"][0].detach()) == pytest.approx(rec.energy[k], rel=1e-10)
    assert res.replicas[0].temperature[0] > 0


def test_float32_state_tracks_float64():
    starts = [nh3(20), nh3(21)]
    r64 = BatchedMD(MorsePotential(), starts, timestep_fs=0.5, temperatures_K=500.0, seeds=[1, 2]).run(40)
    m32 = MorsePotential(dtype=torch.float32)
    md32 = BatchedMD(m32, starts, timestep_fs=0.5, temperatures_K=500.0, seeds=[1, 2])
    assert md32.x.dtype == torch.float32
    r32 = md32.run(40)
    for a, b in zip(r32.replicas, r64.replicas):
        assert np.abs(a.final_positions - b.final_positions).max() < 1e-4
    # float64 integration of a float32 model
    mix = BatchedMD(m32, starts, timestep_fs=0.5, temperatures_K=500.0, seeds=[1, 2], dtype="float64")
    assert mix.x.dtype == torch.float64 and mix.run(5).replicas[0].stable


# ------------------------------------------------------------------------------------------ neighbour lists
def test_periodic_skin_replay_is_exact_and_positions_wrapped():
    """A silica-like cell with a skin far too small for the sync interval: blocks are replayed (exact
    per-step Verlet checks) and the trajectory equals a run with a skin large enough never to need it.
    Positions are wrapped into the cell at each list build."""
    model = small_painn(2)
    starts = [silica_like((1, 1, 1), seed=s) for s in (0, 1)]
    kw = dict(timestep_fs=1.0, temperatures_K=[1500.0, 2000.0], seeds=[1, 2], check_every=25)
    tight = BatchedMD(model, starts, skin=0.05, adapt_skin=False, **kw)
    r_tight = tight.run(50)
    assert tight.replays >= 1 and tight.neighbor_builds > 2
    loose = BatchedMD(model, starts, skin=2.0, **kw)
    r_loose = loose.run(50)
    assert loose.replays == 0
    for a, b in zip(r_tight.replicas, r_loose.replicas):
        d = a.final_positions - b.final_positions
        # equal up to lattice translations (wrapping happens at different times)
        cell = starts[0].cell.array
        frac = d @ np.linalg.inv(cell)
        frac -= np.round(frac)
        assert np.abs(frac @ cell).max() < 1e-9
        np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-8)
    # after a build every atom is inside its cell
    tight._build()
    frac = np.einsum("ni,nij->nj", tight.x.numpy(), np.linalg.inv(tight.cell.numpy())[tight.batch.numpy()])
    assert frac.min() >= -1e-12 and frac.max() < 1.0 + 1e-12
    # the adaptive skin grows instead of replaying every block
    adaptive = BatchedMD(model, starts, skin=0.05, **kw)
    adaptive.run(100)
    assert adaptive.skin > 0.05 and adaptive.replays == 1


@pytest.mark.parametrize("thermostat", ["nose-hoover", "langevin"])
def test_no_host_sync_between_checks(monkeypatch, thermostat):
    """Between syncs a step makes no host transfer: count every way a tensor reaches the host (``.cpu()``,
    ``.item()``, ``.tolist()``, ``.numpy()``, ``bool()``, ``float()``, ``int()``) while steps run; the
    neighbour list is not rebuilt every step either."""
    md = BatchedMD(MorsePotential(), [nh3(22), nh3(23)], timestep_fs=0.5, temperatures_K=300.0, seeds=[1, 2],
                   check_every=20, skin=2.0, thermostat=thermostat, criteria=get_system("ammonia").stability_criteria(None))
    md.run(1)  # the t = 0 sync
    builds = md.neighbor_builds
    calls = []

    def spy(name):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            calls.append(name)
            return orig(self, *a, **k)
        return wrapper

    for name in ("cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name))
    for _ in range(40):
        md._step()
        md._record(md._new_buffer())
    monkeypatch.undo()
    assert calls == []
    assert md.neighbor_builds == builds


def test_bad_arguments():
    with pytest.raises(ValueError, match="thermostat"):
        BatchedMD(MorsePotential(), [nh3()], timestep_fs=0.5, thermostat="berendsen")
    with pytest.raises(ValueError, match="velocities"):
        BatchedMD(MorsePotential(), [nh3()], timestep_fs=0.5, velocities=[np.zeros((4, 3))] * 2)
    with pytest.raises(ValueError, match="max_distance"):
        BatchedMD(MorsePotential(), [silica_like()], timestep_fs=0.5, criteria=get_system("ammonia").stability_criteria())
