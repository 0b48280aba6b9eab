"""Silica glass, built like the paper's (SI section II.A, Table S1) on a cell of configurable size.

The paper's set: 1590 frames of a 699-atom amorphous SiO2 cell sampled from LAMMPS MD (Nosé-Hoover
thermostat and barostat) under 23 conditions — equilibration at 300-3500 K, cooling from 2300 K to 300 K
at 1 K/ps, uniaxial and biaxial tension/compression and biaxial "shear" (tension in x, compression in y)
at strain rates of 10⁻⁴ ps⁻¹ up to 30 % strain — labelled with VASP PBE; and 402 test structures of very
high energy and force (0-30,000 kcal/mol, i.e. 0-43 kcal/mol/atom), binned by energy, two of the
highest-force structures kept per bin.

Here, with the SI's conditions and frame counts, at a cost a workstation can pay (``uqpot data build silica``:
the 1590 frames of Table S1 and a 402-structure test set on a 192-atom cell; ``--atoms 699`` for the
paper's cell):

1. **Cell** (:func:`silica_cell`): α-quartz (space group 154, Si (0.4697, 0, 2/3), O (0.4135, 0.2669,
   0.1191-1/3), a = 4.916, c = 5.405 Å) in its orthohexagonal 18-atom cell, repeated to the most nearly
   cubic box holding at least ``atoms`` atoms, then SiO2 units (a random Si and its two nearest O) are
   removed until ``atoms`` remain (192 atoms = 64 SiO2: a 2x2x3 box of 216 minus 8 units; 699 = 4x2x5
   minus 7 units, the paper's cell).
2. **Melt-quench** with LAMMPS on BKS + the short-range wall (:mod:`uqpot.oracle.bks`; the MD uses PPPM
   and a 7 Å real-space Coulomb cutoff for speed, the labels use the oracle's exact Ewald settings): NVT
   at ``melt_temperature``, NPT quench to 300 K at 0 bar, NPT anneal at 300 K.
3. **Training frames** from the conditions of Table S1 (:data:`TABLE_S1`), each an MD run from the glass,
   with the SI's schedule (:data:`PAPER_MD`) compressed in time by ONE factor, ``time_compression`` (C,
   default 500): every duration is the paper's divided by C and every rate the paper's times C.
   Equilibration: NPT at each temperature, 1 ns/C, then the condition's frames every 100 ps/C (the SI:
   11 ns, frames every 100 ps of the last 10 ns).  Cooling: 5 runs from the glass (own velocities), NPT
   from 2300 to 300 K at C K/ps (the SI: 1 K/ps), 82 frames each, evenly over the ramp (the SI: every
   25 ps; 5 × 82 = 410).  Deformation at 300 K with ``fix deform``: engineering strain rate 1e-4·C per ps
   in x (and the condition's ratio in y) up to 30 % in x, the undeformed directions under the barostat
   at 0 bar, the condition's frames evenly over the run (the SI: every 100 ps).  Frame counts are the
   paper's per condition (1590 in all), times ``frame_scale`` (at least one per condition) for smaller
   builds.
4. **Labels**: every frame with the BKS oracle (``lammps:bks+wall``) through the store.
5. **Test set** (the SI: 402 structures of 0-30,000 kcal/mol, i.e. 0-43 kcal/mol/atom, from adversarial
   sampling during trial runs, binned and deduplicated by energy, the 2 highest-force structures per bin):
   candidates from very hot NVT MD (``hot_temperatures``) and displacements of training frames aimed
   (secant on the amplitude, as in :mod:`.ammonia`) at ``test_bins`` energy bins (201 × 2 = 402) from 0 to
   ``test_e_max_per_atom`` kcal/mol/atom above the training minimum.  The displacement directions come
   from ``directions``: trial adversarial runs (:mod:`uqpot.systems.silica.trial_attack`, which ``uqpot data
   build silica`` uses: a small trial ensemble trained on the training frames, attacked as in Eq. 15-16,
   each attack's displacement a direction), or random directions where none is given.  Candidates of the
   same energy (to 1e-6 kcal/mol) are duplicates; per bin the ``test_per_bin`` structures with the
   highest atomic force (max |F_i|) are kept.

Resumable: the glass and each condition's frames are saved under ``OUT/md/`` (NumPy files written
atomically) as soon as they exist, and every label is in the store; a rerun skips the finished MD and
makes no oracle call for a stored label.  LAMMPS MD is deterministic in one process, so an interrupted
condition is rerun to the same frames.

Written files (``OUT/``): ``train.extxyz`` and ``test.extxyz`` (energies kcal/mol **relative to the
lowest training energy**, ``info["reference_energy"]`` its absolute BKS energy; forces kcal/mol/Å;
positions and cell Å; ``info``: ``condition``, ``group``, ``time_ps``, ``temperature``, ``strain_x``,
``strain_y``, ``method``, ``store_id``), ``summary.json`` with the per-condition frame counts (the
analogue of Table S1) and energy histograms.

**Your own DFT data** (the paper's VASP PBE labels): uqpot reads VASP outputs through ``ase.io``, e.g.
``uqpot data check vasprun.xml --energy-unit eV`` (or ``OUTCAR``); energies and forces come from the
calculator results ASE attaches (eV, eV/Å; ``energy`` is VASP's energy extrapolated to σ → 0) and are
converted to kcal/mol.  In a training config set ``data.path: vasprun.xml`` and ``data.energy_unit: eV``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ...data.io import write_extxyz
from ...data.sets._build import Labeller, StageProgress, elapsed
from ...data.sets._common import BuildError, energy_histogram
from ...data.store import open_store
from ...data.structures import StructureDataset
from ...oracle import get_oracle
from ...core.provenance import write_json
from .cell import quartz_orthorhombic, silica_cell
from .config import MASSES, TABLE_S1, SilicaConfig
from .md import LammpsMD, _frames_file, _hot_frames, _load_npz, _run_condition, _save_npz, melt_quench
from .test_set import _max_force, _structures, _test_set

SOURCE = "uqpot data build silica"


def _relative(structures, e_ref: float, method: str) -> list:
    out = []
    for s in structures:
        info = {k: v for k, v in s.info.items() if k != "cell"}
        out.append(s.__class__(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc,
                               energy=float(s.energy - e_ref), forces=s.forces, source=None, frame=None,
                               info={**info, "reference_energy": float(e_ref), "method": method},
                               stress=s.stress))
    return out


def build_silica(out, *, atoms: int | None = None, store=None, config: SilicaConfig | None = None,
                 oracle=None, progress: bool = True, console=None, directions=None) -> dict:
    """Builds the silica training and test sets into ``out`` (see the module docstring); returns the
    summary (also ``OUT/summary.json``).  ``oracle``: default the BKS oracle (``lammps:bks+wall``).
    ``directions``: a callable ``(training structures, out folder) -> [(frame index, displacement)]`` that
    gives the test set's displacement directions (:func:`uqpot.systems.silica.trial_attack.adversarial_directions`,
    the SI's trial adversarial runs), or None for random directions."""
    t0 = time.perf_counter()
    cfg = config or SilicaConfig()
    if atoms is not None:
        cfg.atoms = int(atoms)
    cfg.check()
    out = Path(out)
    md_dir = out / "md"
    md_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(store if store is not None else out / "labels.db")
    oracle = get_oracle("bks") if oracle is None else (get_oracle(oracle) if isinstance(oracle, str) else oracle)
    labeller = Labeller(oracle, store, SOURCE)
    calls0 = oracle.calls
    timings: dict = {"md": 0.0, "labels": 0.0}
    table = []
    train = []
    with StageProgress(progress, console) as prog:
        prog.stage(f"melt-quench ({cfg.atoms} atoms)", total=None)
        t = time.perf_counter()
        glass = melt_quench(cfg, md_dir, prog)
        timings["melt_quench"] = elapsed(t)
        numbers = glass["numbers"]
        vol = float(np.prod(glass["lengths"]))
        mass_g = sum(MASSES[int(z)] for z in numbers) / 6.02214076e23
        density = mass_g / (vol * 1e-24)
        prog.log(f"glass: {len(numbers)} atoms, box {' x '.join(f'{v:.2f}' for v in glass['lengths'])} Å, "
                 f"density {density:.3f} g/cm³")
        prog.stage("MD conditions of Table S1", total=len(TABLE_S1))
        for index, row in enumerate(TABLE_S1):
            group, name, temp, rate, ex, ey, paper = row
            path = _frames_file(md_dir, name)
            t = time.perf_counter()
            frames = _load_npz(path, cfg.md_key())
            if frames is None:
                frames = _run_condition(cfg, glass, index, row)
                _save_npz(path, cfg.md_key(), **frames)
            timings["md"] += time.perf_counter() - t
            t = time.perf_counter()
            structs = _structures(numbers, frames, {"stage": "train", "condition": name, "group": group})
            labelled, records = labeller(structs, name)
            timings["labels"] += time.perf_counter() - t
            ok = []
            for lab, rec in zip(labelled, records):
                if lab is not None:
                    lab.info["store_id"] = rec.store_id
                    ok.append(lab)
            train += ok
            table.append({"type": group, "name": name, "temperature_K": temp,
                          "cooling_rate_K_per_ps": None if rate is None else cfg.effective_cooling_rate,
                          "paper_cooling_rate_K_per_ps": rate,
                          "strain_rate_x_per_ps": None if ex is None else ex * cfg.effective_strain_rate,
                          "strain_rate_y_per_ps": None if ey is None else ey * cfg.effective_strain_rate,
                          "paper_strain_rate_x_1e-4_per_ps": ex, "paper_strain_rate_y_1e-4_per_ps": ey,
                          "frames": len(ok), "failed": len(structs) - len(ok), "paper_frames": paper,
                          "final_strain_x": round(float(frames["strain_x"][-1]), 4),
                          "final_strain_y": round(float(frames["strain_y"][-1]), 4)})
            prog.update(advance=1, note=f"{name}: {len(ok)} frames")
        if not train:
            raise BuildError("no training frame was labelled")
        e_ref = float(min(s.energy for s in train))
        prog.stage("hot MD for the test set", total=len(cfg.hot_temperatures))
        hot = []
        for k, temp in enumerate(cfg.hot_temperatures):
            name = f"hot_{int(temp)}K"
            path = _frames_file(md_dir, name)
            t = time.perf_counter()
            frames = _load_npz(path, cfg.md_key())
            if frames is None:
                frames = _hot_frames(cfg, glass, k, temp)
                _save_npz(path, cfg.md_key(), **frames)
            timings["md"] += time.perf_counter() - t
            structs = _structures(numbers, frames, {"stage": "test", "kind": "hot-md", "condition": name})
            labelled, records = labeller(structs, "test")
            for lab, rec in zip(labelled, records):
                if lab is not None:
                    lab.info["store_id"] = rec.store_id
                    hot.append(lab)
            prog.update(advance=1)
        dirs, source = None, "random displacements"
        if directions is not None:
            prog.stage("trial adversarial runs (the test set's directions)", total=None)
            t = time.perf_counter()
            dirs = directions(train, out / "trial")
            timings["trial_attack"] = elapsed(t)
            source = f"displacements along {len(dirs)} trial adversarial samples"
            prog.log(f"trial attacks gave {len(dirs)} directions")
        prog.stage(f"test set ({cfg.test_per_bin} highest-force per bin, {cfg.test_bins} bins)",
                   total=cfg.test_bins * cfg.test_per_bin)
        t = time.perf_counter()
        test, missing, n_candidates, rounds, width = _test_set(cfg, train, hot, labeller, e_ref, prog, dirs)
        timings["test"] = elapsed(t)
    train_rel = _relative(train, e_ref, oracle.method)
    test_rel = _relative(test, e_ref, oracle.method)
    write_extxyz(StructureDataset(train_rel), out / "train.extxyz")
    write_extxyz(StructureDataset(test_rel), out / "test.extxyz")
    e_train = np.array([s.energy for s in train_rel])
    e_test = np.array([s.energy for s in test_rel])
    f_train = np.array([_max_force(s) for s in train_rel])
    f_test = np.array([_max_force(s) for s in test_rel])
    n_at = len(numbers)
    test_edges = np.linspace(0.0, width * cfg.test_bins, cfg.test_bins + 1)
    train_edges = np.linspace(0.0, max(float(e_train.max()), 1e-9), 21)
    summary = {
        "dataset": "silica",
        "method": oracle.method,
        "units": {"energy": "kcal/mol (relative to the lowest training energy)", "forces": "kcal/mol/Å",
                  "positions": "Å", "time": "ps", "temperature": "K"},
        "atoms": n_at, "composition": {"Si": int((numbers == 14).sum()), "O": int((numbers == 8).sum())},
        "glass": {"box_A": [float(v) for v in glass["lengths"]], "density_g_per_cm3": round(density, 4)},
        "reference_energy_kcal_per_mol": e_ref,
        "time_compression": cfg.time_compression,
        "conditions": table,
        "train": {"file": "train.extxyz", "n": len(train_rel), "paper_n": 1590,
                  "energy_max": float(e_train.max()), "energy_max_per_atom": float(e_train.max()) / n_at,
                  "max_force_max": float(f_train.max()), "histogram": energy_histogram(e_train, train_edges)},
        "test": {"file": "test.extxyz", "n": len(test_rel), "bins": cfg.test_bins, "bin_width_kcal_per_mol": width,
                 "energy_max": float(e_test.max()) if len(e_test) else None,
                 "energy_max_per_atom": float(e_test.max()) / n_at if len(e_test) else None,
                 "max_force_median": float(np.median(f_test)) if len(f_test) else None,
                 "hot_md_frames": len(hot), "candidates_labelled": n_candidates + len(hot), "rounds": rounds,
                 "missing_bins": missing, "directions": source,
                 "kinds": {k: int(sum(1 for s in test_rel if s.info.get("kind") == k))
                           for k in ("hot-md", "displacement", "adversarial-direction")},
                 "histogram": energy_histogram(e_test, test_edges)},
        "labels": {**labeller.counter.as_dict(), "oracle_calls": oracle.calls - calls0,
                   "store": str(store.path), "store_rows": store.count()},
        "config": asdict(cfg),
        "timings_seconds": {k: round(v, 2) for k, v in {**timings, "total": time.perf_counter() - t0}.items()},
    }
    write_json(out / "summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    """The per-condition frame counts (the analogue of SI Table S1) as text."""
    lines = [f"{'simulation type':<26} {'name':<18} {'T (K)':>6} {'rate x/y (1/ps)':>18} {'frames':>6} {'paper':>6}"]
    for r in summary["conditions"]:
        rates = "-"
        if r["strain_rate_x_per_ps"] is not None:
            rates = f"{r['strain_rate_x_per_ps']:+.3g}" + (f"/{r['strain_rate_y_per_ps']:+.3g}"
                                                           if r["strain_rate_y_per_ps"] is not None else "")
        elif r["cooling_rate_K_per_ps"] is not None:
            rates = f"{r['cooling_rate_K_per_ps']:g} K/ps"
        temp = "-" if r["temperature_K"] is None else f"{r['temperature_K']}"
        lines.append(f"{r['type']:<26} {r['name']:<18} {temp:>6} {rates:>18} {r['frames']:>6} {r['paper_frames']:>6}")
    total = sum(r["frames"] for r in summary["conditions"])
    lines.append(f"{'total':<26} {'':<18} {'':>6} {'':>18} {total:>6} {1590:>6}")
    return "\n".join(lines)


__all__ = ["SilicaConfig", "build_silica", "silica_cell", "quartz_orthorhombic", "LammpsMD", "TABLE_S1",
           "format_table", "melt_quench"]
