"""The robustness tests of an active-learning generation: MD stability campaign and the NH3 inversion
barrier (paper Fig. 3b/3e/3d/3g, Fig. 4c), as steps of :mod:`uqpot.loop.active_learning`.

MD: the paper's campaign settings for the system (:meth:`uqpot.systems.base.System.campaign_config`), with
the loop config's ``md`` section as overrides (``length_scale`` scales the run length; any other key is a
campaign option, e.g. ``runs``, ``temperatures_K``, or ``ensemble: npt`` with ``pressure_bar`` for
constant pressure on ASE's MTK barostat, as the paper's silica data generation ran).  Runs start from
structures drawn from every initial structure (Sec. 2.5: "picked randomly from the initial training data
set containing 78 geometries", i.e. the training and validation pools of generation 1); for silica from the
2500 K equilibration frames (Sec. 2.5), and where no initial frame carries that label the campaign says so
(log and summary) and starts from every initial structure.

Ammonia's ground state (Sec. 2.5: a trajectory is unstable "if the predicted energy was lower than the
ground state energy, which is at a reference point of 0 kcal/mol"): the energy of the optimised minimum,
by the oracle (:func:`nh3_minimum`, the C3v minimum that the NEB's reference shares, every point a label
through the store), on the loop's energy scale (the oracle's; the data are aligned to it).  Not the lowest
energy of the training split: a split that leaves the minimum in validation put the floor above it, and a
correct harmonic NH3 at 300 K spends a few percent of its time below 0.3 kcal/mol.

NEB: the model's climbing-image NEB between the two pyramidal minima (relaxed with the model).  The oracle's
barrier is computed once per loop by symmetry, which is exact for NH3 and costs tens of labels instead of a
full NEB: the transition state is the planar (D3h) structure, so the barrier is E(planar, N-H length
optimised) − E(minimum, relaxed); the oracle's profile is its energy along the inversion path (the N-H
bonds' angle to the C3 axis swept through planarity, N-H length interpolated between the two stationary
points).  ``neb: full`` in a config runs the oracle's own NEB instead (slow with DFT).
"""

from __future__ import annotations

import numpy as np

from ..data.structures import Structure
from ..md.campaign import CampaignConfig, run_campaign
from ..systems import find_system


def campaign_config(md: dict, system: str, seed: int):
    """The loop's campaign: the registered system's (its paper settings and criteria, :mod:`uqpot.systems`)
    with ``md``'s settings, or a custom one for a generic loop (``molecule``, ``generic``)."""
    opts = dict(md)
    scale = float(opts.pop("length_scale", 1.0))
    opts.setdefault("seed", seed)
    found = find_system(system)
    if found is not None:
        return found.campaign_config(length_scale=scale, **opts)
    cfg = CampaignConfig(system="custom", **opts)
    cfg.duration_fs = cfg.duration_fs * scale
    return cfg


def start_structures(initial, system: str) -> tuple[list, str]:
    """(the campaign's start structures, where they come from): the system's
    (:meth:`uqpot.systems.base.System.md_starts`: silica's 2500 K equilibration frames where they are marked),
    else every initial structure."""
    found = find_system(system)
    if found is None:
        starts = list(initial)
        return starts, f"every initial structure ({len(starts)})"
    return found.md_starts(initial)


def run_campaign_for_loop(model, initial, md: dict, system: str, out_dir, seed: int = 0,
                          ground_state: float | None = None, log=None) -> dict:
    """Runs the stability campaign of one generation's model from the ``initial`` structures; returns its
    summary (also saved).  ``ground_state``: ammonia's optimised minimum energy (kcal/mol, the model's scale),
    the energy floor unless ``md`` sets ``ground_state_energy``."""
    cfg = campaign_config(md, system, seed)
    if cfg.ground_state_energy == "optimised" and cfg.energy_floor:
        if ground_state is None:
            raise ValueError(f"{system}'s MD needs the optimised minimum's energy (the loop computes it with the oracle)")
        cfg.ground_state_energy = float(ground_state)
    starts, pool = start_structures(initial, system)
    if log is not None and pool.startswith("warning"):
        log(pool)
    res = run_campaign(cfg, model, starts, out_dir=out_dir)  # NVT: batched; NPT: ASE (MTK)
    return {**res.summary(), "start_pool": pool}


# ---------------------------------------------------------------------------------------------- NEB
def _profile(res) -> dict:
    x = np.asarray(res.path, dtype=float)
    x = x / x[-1] if x[-1] > 0 else x
    return {"x": x.tolist(), "energy": [float(e) for e in res.energies]}


def neb_for_loop(model, oracle_record: dict, out_dir, n_images: int = 11) -> dict:
    """The model's NH3 inversion barrier by climbing-image NEB, next to the oracle's."""
    from ..md.neb import nh3_inversion_barrier

    res = nh3_inversion_barrier(model, n_images=n_images)
    return {"barrier": float(res.barrier), "converged": bool(res.converged), "path": _profile(res),
            "oracle_barrier": oracle_record.get("barrier"), "oracle_path": oracle_record.get("path"),
            "units": "kcal/mol"}


def _planar_and_pyramid(r: float, theta: float) -> np.ndarray:
    """NH3 with N at the origin, N-H length r, angle theta between each N-H and the -z axis (90° = planar)."""
    pos = [[0.0, 0.0, 0.0]]
    for k in range(3):
        phi = 2 * np.pi * k / 3
        pos.append([r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), -r * np.cos(theta)])
    return np.array(pos)


class _NH3Energies:
    """The oracle's energy of NH3 in C3v symmetry (N-H length r, angle theta to the C3 axis), each point a label
    through the store, cached by (r, theta) rounded to 1e-6."""

    def __init__(self, oracle, store):
        self.oracle, self.store, self.cache = oracle, store, {}

    def __call__(self, r: float, theta: float) -> float:
        key = (round(r, 6), round(theta, 6))
        if key not in self.cache:
            s = Structure(np.array([7, 1, 1, 1]), _planar_and_pyramid(r, theta), np.zeros((3, 3)), np.zeros(3, bool))
            lab = self.oracle.label([s], store=self.store, provenance={"source": "neb_oracle"})
            if lab.structures[0] is None:
                raise RuntimeError(f"the oracle failed on an NH3 inversion point: {lab.records[0].error}")
            self.cache[key] = float(lab.structures[0].energy)
        return self.cache[key]

    def minimum(self) -> tuple[float, float, float]:
        """(r, theta, energy) of the minimum within C3v symmetry (Nelder-Mead, 1e-3 Å and kcal/mol)."""
        from scipy.optimize import minimize

        mini = minimize(lambda p: self(p[0], p[1]), x0=[1.02, np.deg2rad(68.0)], method="Nelder-Mead",
                        options={"xatol": 1e-3, "fatol": 1e-3, "maxiter": 60})
        r0, t0 = float(mini.x[0]), float(mini.x[1])
        return r0, t0, self(r0, t0)


def nh3_minimum(oracle, store) -> dict:
    """The oracle's optimised NH3 minimum: its energy (kcal/mol, the oracle's scale), N-H length (Å) and the
    N-H bonds' angle to the C3 axis; the same points as :func:`oracle_neb_for_loop`'s minimum (labels shared
    through the store)."""
    energies = _NH3Energies(oracle, store)
    r0, t0, e0 = energies.minimum()
    return {"energy": e0, "r_NH": r0, "angle_deg": float(np.rad2deg(t0)), "oracle_labels": len(energies.cache),
            "units": "kcal/mol, Å, degrees"}


def oracle_neb_for_loop(oracle, store, out_dir, n_points: int = 9, mode: str = "symmetric") -> dict:
    """The oracle's inversion barrier (kcal/mol) and profile, computed once per loop; every energy is a
    label through the store."""
    if mode == "full":
        from ..md.neb import nh3_inversion_barrier

        res = nh3_inversion_barrier(oracle, n_images=9, fmax=0.05)
        return {"barrier": float(res.barrier), "path": _profile(res), "mode": "full NEB"}
    from scipy.optimize import minimize_scalar

    energy = _NH3Energies(oracle, store)
    cache = energy.cache
    # minimum within C3v symmetry (r, theta), and the planar transition state (r only)
    r0, t0, _ = energy.minimum()
    ts = minimize_scalar(lambda r: energy(r, np.pi / 2), bounds=(0.9, 1.15), method="bounded",
                         options={"xatol": 1e-3, "maxiter": 25})
    r_ts = float(ts.x)
    e_min, e_ts = energy(r0, t0), energy(r_ts, np.pi / 2)
    # the profile: theta from the minimum through planarity to the mirror image, r interpolated
    thetas = np.linspace(t0, np.pi - t0, n_points)
    w = 1 - np.abs(thetas - np.pi / 2) / (np.pi / 2 - t0)
    prof = [energy(r0 + (r_ts - r0) * wk, th) - e_min for th, wk in zip(thetas, w)]
    return {"barrier": e_ts - e_min, "minimum": {"r_NH": r0, "angle_deg": float(np.rad2deg(t0))},
            "transition_state": {"r_NH": r_ts}, "path": {"x": np.linspace(0, 1, n_points).tolist(),
                                                          "energy": [float(e) for e in prof]},
            "oracle_labels": len(cache), "mode": "symmetric (planar D3h transition state)", "units": "kcal/mol"}
