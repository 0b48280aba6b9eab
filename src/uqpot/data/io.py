"""Reading and validating structure files.

Any file that ``ase.io`` reads (extended XYZ, ASE databases, VASP outputs, ...) is accepted, and the formats
that data-set modules register with :func:`register_reader` (rMD17's ``.npz`` files, NFF ``.pth.tar``
files; registered when :mod:`uqpot.data` is imported).  Energies and
forces come from the calculator results that ASE attaches when it reads a file, or from named
``info``/``arrays`` keys (``energy_key``/``forces_key``).  Inputs are converted to uqpot's units
(kcal/mol, Å) from the declared ``energy_unit`` and ``length_unit``.

Every frame is validated by :func:`validate_structure`; all problems are collected and reported together,
each naming the file, the frame and the field.  An unreadable frame of an extended XYZ file is reported and
reading goes on with the next frame (:mod:`uqpot.data.readers`).  The same rules are used by every entry point
(``uqpot train``, ``uqpot evaluate``, ``uqpot data check``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core import fields as F
from ..core.errors import DataError, DataErrors
from ..core.units import UnitError, energy_factor, length_factor
from .neighbors import neighbor_list
from .readers import asymmetry, is_xyz, iter_ase, iter_xyz, read_failure
from .structures import Structure, StructureDataset

MAX_Z = 118
#: largest accepted |coordinate| (Å).  Models run in float32, whose resolution at 1e4 Å is 1e-3 Å; far
#: beyond it pair distances lose every digit (a molecule translated by 1e10 Å gives NaN energies) and a
#: neighbour list's bounding box spans more cells than it can count.
MAX_COORDINATE = 1.0e4


@dataclass
class ReadOptions:
    """How to read a structure file (mirrors the ``data`` section of a config)."""

    format: str | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    #: where the stress is (default: the calculator results' ``stress``, else a ``virial`` in the frame's
    #: info, converted as σ = −W/V); 3×3 or Voigt (xx, yy, zz, yz, xz, xy), in energy_unit/length_unit³
    stress_key: str | None = None
    energy_unit: str = "kcal/mol"
    length_unit: str = "Å"
    require_energy: bool = True
    require_forces: bool = True
    min_distance: float = 0.5
    index: str = ":"
    check_units: bool = True  # energies and forces consistent (see check_unit_consistency)

    def __post_init__(self):
        energy_factor(self.energy_unit)  # unknown units fail at once (UnitError)
        length_factor(self.length_unit)
        if not np.isfinite(self.min_distance) or self.min_distance < 0:
            raise UnitError(f"min_distance must be a finite distance >= 0 Å, got {self.min_distance}")


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "no such file")
    if path.is_dir():
        raise DataError(path, "is a directory, expected a structure file")
    if not os.access(path, os.R_OK):
        raise DataError(path, "file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (no frames)")


def _lookup(atoms, key: str, per_atom: bool):
    """A value from the calculator results, then info (per structure) or arrays (per atom)."""
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    store = atoms.arrays if per_atom else atoms.info
    if key in store:
        return store[key]
    return None


#: readers of files that ``ase.io`` does not read, registered by the modules that know the format
#: (:mod:`uqpot.data.sets.rmd17`: ``.npz``, :mod:`uqpot.data.sets.nff`: NFF ``.pth.tar``): name -> (does the
#: path match, frames of the file as (frame, ase.Atoms with labels))
READERS: dict[str, tuple[Callable[[Path], bool], Callable]] = {}


def register_reader(name: str, matches: Callable[[Path], bool], frames: Callable) -> None:
    """Registers a file format: ``frames(path, options)`` yields (frame, ``ase.Atoms`` with a calculator
    holding energy and forces), which then go through the same unit conversion and validation as any file."""
    READERS[name] = (matches, frames)


def _frames(path: Path, options: ReadOptions):
    for matches, frames in READERS.values():
        if matches(path):
            return frames(path, options)
    if is_xyz(path, options.format) and options.index == ":":
        return iter_xyz(path, options.format)
    return iter_ase(path, options.format, options.index)


def validate_structure(s: Structure, path, frame: int, options: ReadOptions) -> list[DataError]:
    """All problems of one structure (empty list when valid)."""
    problems: list[DataError] = []

    def bad(field, message):
        problems.append(DataError(path, message, frame=frame, field=field))

    n = len(s.numbers)
    if n == 0:
        bad(F.NUMBERS, "frame has no atoms")
        return problems
    z = s.numbers
    unknown = sorted({int(x) for x in z if x < 1 or x > MAX_Z})
    if unknown:
        bad(F.NUMBERS, f"unknown element(s) with atomic number {unknown}")
    if s.positions.shape != (n, 3):
        bad(F.POSITIONS, f"shape {s.positions.shape}, expected ({n}, 3)")
    elif not np.all(np.isfinite(s.positions)):
        rows = np.unique(np.nonzero(~np.isfinite(s.positions))[0])
        bad(F.POSITIONS, f"non-finite coordinates (NaN/inf) on atom(s) {rows[:10].tolist()}")
    elif np.abs(s.positions).max() > MAX_COORDINATE:
        rows = np.unique(np.nonzero(np.abs(s.positions) > MAX_COORDINATE)[0])
        bad(F.POSITIONS, f"coordinates up to {np.abs(s.positions).max():.3g} Å on atom(s) {rows[:10].tolist()}; "
                         f"uqpot accepts |x| <= {MAX_COORDINATE:.0e} Å (beyond, the network's float32 positions lose "
                         "the precision of pair distances): translate the structure towards the origin, or wrap it "
                         "into its cell")
    cell_ok = True
    if s.periodic:
        if not np.all(np.isfinite(s.cell)):
            bad(F.CELL, "non-finite cell")
            cell_ok = False
        elif np.allclose(s.cell, 0.0):
            bad(F.CELL, f"periodic frame (pbc={s.pbc.tolist()}) without a cell")
            cell_ok = False
        elif abs(np.linalg.det(s.cell)) < 1e-6:
            bad(F.CELL, f"cell has zero volume (det = {np.linalg.det(s.cell):.3g} Å^3); a periodic frame "
                        "needs three independent cell vectors")
            cell_ok = False
    if options.require_energy:
        if s.energy is None:
            key = options.energy_key or F.ENERGY
            bad(key, "no energy (looked in the calculator results and in the frame's info)")
        elif not np.isfinite(s.energy):
            bad(options.energy_key or F.ENERGY, f"non-finite energy ({s.energy})")
    if s.forces is not None or options.require_forces:
        key = options.forces_key or F.FORCES
        if s.forces is None:
            bad(key, "no forces (looked in the calculator results and in the per-atom arrays)")
        elif s.forces.shape != (n, 3):
            bad(key, f"forces have shape {tuple(s.forces.shape)}, positions have ({n}, 3)")
        elif not np.all(np.isfinite(s.forces)):
            rows = np.unique(np.nonzero(~np.isfinite(s.forces))[0])
            bad(key, f"non-finite forces (NaN/inf) on atom(s) {rows[:10].tolist()}")
    if s.stress is not None:
        key = options.stress_key or F.STRESS
        if not s.periodic:
            bad(key, "stress on a frame without a periodic cell (stress is defined for periodic frames only)")
        elif s.stress.shape != (3, 3):
            bad(key, f"stress has shape {tuple(s.stress.shape)}; expected 3x3, or 6 (Voigt) or 9 values")
        elif not np.all(np.isfinite(s.stress)):
            comps = sorted({"xyz"[min(a, b)] + "xyz"[max(a, b)] for a, b in zip(*np.nonzero(~np.isfinite(s.stress)))})
            bad(key, f"non-finite stress (NaN/inf) in component(s) {', '.join(comps)}")
        elif asymmetry(s.stress):
            bad(key, f"stress is {asymmetry(s.stress)}")
    if (
        options.min_distance > 0
        and n > 1
        and cell_ok
        and s.positions.shape == (n, 3)
        and np.all(np.isfinite(s.positions))
        and np.abs(s.positions).max() <= MAX_COORDINATE
    ):
        i, j, shifts = neighbor_list(s.positions, s.cell, s.pbc, options.min_distance)
        if len(i):
            vec = s.positions[j] - s.positions[i] + shifts @ s.cell
            d = np.linalg.norm(vec, axis=1)
            k = int(np.argmin(d))
            bad(
                F.POSITIONS,
                f"atoms {int(i[k])} and {int(j[k])} are {d[k]:.3f} Å apart, closer than the minimum "
                f"distance {options.min_distance} Å ({len(i) // 2} such pair(s))",
            )
    return problems


#: largest difference between a frame's stress and the one its virial gives (σ = −W/V), relative
STRESS_VIRIAL_TOL = 1e-4


def _structure_from_atoms(atoms, path, frame, options, e_factor, l_factor) -> Structure:
    energy = _lookup(atoms, options.energy_key or F.ENERGY, per_atom=False)
    forces = _lookup(atoms, options.forces_key or F.FORCES, per_atom=True)
    try:
        energy = None if energy is None else float(np.asarray(energy).reshape(()))
    except (TypeError, ValueError):
        raise DataError(path, f"energy is not a single number: {energy!r}", frame=frame,
                        field=options.energy_key or F.ENERGY) from None
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64) * (e_factor / l_factor)
    s = Structure.from_atoms(atoms, None, forces, source=str(path), frame=frame)
    s.positions = s.positions * l_factor
    s.cell = s.cell * l_factor
    s.stress = _stress(atoms, options, e_factor / l_factor ** 3, path, frame)
    s.energy = None if energy is None else energy * e_factor
    return s


def _tensor(value, factor: float):
    """A stress-like value as 3×3 times ``factor`` (Voigt or 9 values); another shape is kept as read, for
    the validation to name."""
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return np.full((1,), np.nan)
    if v.size == 6:
        xx, yy, zz, yz, xz, xy = v.reshape(6)
        v = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif v.size == 9:
        v = v.reshape(3, 3)
    return v * factor


def _stress(atoms, options: ReadOptions, factor: float, path=None, frame=None):
    """The frame's stress as 3×3 in kcal/mol/Å³ (None if it has none): the stress (``stress_key``, else the
    calculator's), else the virial (σ = −W/V).  A frame with both must have them agree (DataError): one of
    the two would otherwise be ignored silently."""
    value = _lookup(atoms, options.stress_key or F.STRESS, per_atom=False)
    virial = atoms.info.get("virial") if options.stress_key is None else None
    from_virial = None
    if virial is not None:
        vol = abs(float(np.linalg.det(atoms.cell.array)))
        from_virial = -_tensor(virial, factor / vol if vol > 0 else float("nan"))  # W = −σV
    if value is None:
        return from_virial
    stress = _tensor(value, factor)
    if (from_virial is not None and stress.shape == (3, 3) == from_virial.shape
            and np.all(np.isfinite(stress)) and np.all(np.isfinite(from_virial))):
        gap = float(np.abs(stress - from_virial).max())
        if gap > STRESS_VIRIAL_TOL * max(float(np.abs(stress).max()), float(np.abs(from_virial).max()), 1e-12):
            raise DataError(path, f"the frame's stress and its virial disagree (by up to {gap:.4g} kcal/mol/Å³ once "
                                  "the virial is turned into a stress, σ = −W/V): give one of them, or fix the "
                                  "other", frame=frame, field="stress/virial")
    return stress


def read_structures(path, options: ReadOptions | None = None, collect: list | None = None) -> StructureDataset:
    """Reads and validates every frame of ``path``.

    Raises :class:`DataErrors` listing every problem (file, frame, field) unless ``collect`` is given, in
    which case problems are appended to it and only the valid frames are returned.
    """
    options = options or ReadOptions()
    path = Path(path)
    try:
        e_factor = energy_factor(options.energy_unit)
        l_factor = length_factor(options.length_unit)
    except UnitError as exc:
        raise DataError(path, str(exc)) from None
    problems: list[DataError] = []
    structures: list[Structure] = []
    try:
        _check_path(path)
        for frame, atoms in _frames(path, options):
            if isinstance(atoms, DataError):  # an unreadable frame; the reader goes on with the next
                problems.append(atoms)
                continue
            try:
                s = _structure_from_atoms(atoms, path, frame, options, e_factor, l_factor)
            except DataError as exc:
                problems.append(exc)
                continue
            found = validate_structure(s, path, frame, options)
            if found:
                problems.extend(found)
            else:
                structures.append(s)
    except DataError as exc:
        problems.append(exc)
    if not structures and not problems:
        problems.append(DataError(path, read_failure(path, options.format, None)))
    if not problems and structures:
        problem = check_stress_coverage(structures, path, options)
        if problem is not None:
            problems.append(problem)
    if options.check_units and not problems and len(structures) >= 10:
        problem = check_unit_consistency(structures, path)
        if problem is not None:
            problems.append(problem)
    if collect is not None:
        collect.extend(problems)
    elif problems:
        raise DataErrors(problems)
    return StructureDataset(structures)


#: ratios between energy units that a file may mix up (name, factor to kcal/mol)
_UNIT_RATIOS = {"eV": 23.060548, "Hartree": 627.5095, "kJ/mol": 1 / 4.184}


#: pairs closer than this (RMS displacement, Å) judge any unit ratio; farther pairs (up to PAIR_FAR) only the
#: large ones (eV, Hartree), where the straight-line work's anharmonic error cannot reach
PAIR_NEAR, PAIR_FAR = 0.1, 0.2
#: unique pairs needed for a verdict
MIN_PAIRS = 5


def check_unit_consistency(structures, path, max_frames: int = 400) -> DataError | None:
    """Energies and forces in the same energy unit?  For pairs of nearby frames of one composition the
    energy change must match the work of the forces, ΔE ≈ −½(F₁ + F₂)·Δx, with slope 1.  A slope near a
    known unit ratio (23.06 for eV vs kcal/mol, 627.5 for Hartree, 4.184 for kJ/mol) means the file's
    energies and forces are in different units (a length-unit error cancels out and is not detected here).

    The straight-line work is exact for a harmonic surface only; its error grows with the displacement
    (measured on correct labels: slope 0.98 on rMD17 ethanol pairs closer than 0.1 Å RMS, 0.75-0.8 at
    0.15-0.2 Å; 0.26 on high-temperature NH3 MD frames 0.1-0.2 Å apart, which a kJ/mol check would take
    for a unit error).  So every pair (each counted once) closer than ``PAIR_NEAR`` judges any ratio, and
    when there are too few of them pairs up to ``PAIR_FAR`` judge only the large ratios (eV, Hartree).
    Inconclusive data (fewer than ``MIN_PAIRS`` pairs, poor correlation) is let through."""
    groups: dict = {}
    for s in structures:
        if s.energy is not None and s.forces is not None and not s.periodic:
            groups.setdefault(tuple(s.numbers.tolist()), []).append(s)
    for group in groups.values():
        if len(group) < 10:
            continue
        group = group[:max_frames]
        X = np.stack([s.positions for s in group])
        E = np.array([s.energy for s in group])
        Fo = np.stack([s.forces for s in group])
        D = np.sqrt(((X[:, None] - X[None]) ** 2).mean((-1, -2)))
        np.fill_diagonal(D, np.inf)
        j = D.argmin(1)
        pairs = sorted({(min(a, int(b)), max(a, int(b))) for a, b in enumerate(j) if D[a, b] < PAIR_FAR})
        near = [p for p in pairs if D[p] < PAIR_NEAR]
        large_only = len(near) < MIN_PAIRS
        use = pairs if large_only else near
        if len(use) < MIN_PAIRS:
            continue
        i, k = np.array([p[0] for p in use]), np.array([p[1] for p in use])
        dE = E[k] - E[i]
        work = -0.5 * ((Fo[i] + Fo[k]) * (X[k] - X[i])).sum((-1, -2))
        if np.std(work) == 0 or np.std(dE) == 0 or np.corrcoef(work, dE)[0, 1] < 0.8:
            continue
        slope = float(np.sum(work * dE) / np.sum(work ** 2))
        if 1 / 3 < slope < 3:
            continue
        candidates = [(abs(np.log(abs(slope) / ratio)), ratio, how) for name, r in _UNIT_RATIOS.items()
                      if not large_only or r > 10.0
                      for ratio, how in ((1 / r, f"energies in {name}, forces in kcal/mol/Å"),
                                         (r, f"forces in {name}/Å, energies in kcal/mol"))]
        dist, ratio, how = min(candidates)
        if large_only and dist >= 0.5:
            continue  # far pairs only: a slope off 1 but near no large ratio may be the work's own error
        guess = f" (close to {ratio:.4g}: {how}?)" if dist < 0.5 else ""
        return DataError(path, f"energies and forces are not in the same units: energy changes between nearby "
                               f"frames are {slope:.4g} x the work of the forces{guess}; declare the units of "
                               "each, or fix the file", field="energy/forces")
    return None


def check_stress_coverage(structures, path, options: ReadOptions) -> DataError | None:
    """A stress that would be silently unused: a ``stress_key`` that no frame has, or a stress on some
    periodic frames of a file and not on others (training and the metrics use a stress only where every
    structure has one)."""
    key = options.stress_key or F.STRESS
    periodic = [s for s in structures if s.periodic]
    with_stress = [s for s in periodic if s.stress is not None]
    if options.stress_key is not None and not with_stress:
        return DataError(path, f"data.stress_key '{options.stress_key}': no frame has it (the stress would not be "
                               "used); check the key's name, or leave stress_key out", field=key)
    if with_stress and len(with_stress) < len(periodic):
        without = [s.frame for s in periodic if s.stress is None]
        return DataError(path, f"a stress on {len(with_stress)} of {len(periodic)} periodic frames (none on frames "
                               f"{without[:10]}{' ...' if len(without) > 10 else ''}); training and the metrics use a "
                               "stress only where every structure has one, so these would be silently unused: give "
                               "it on every frame, or on none", field=key)
    return None


def check_files(paths, options: ReadOptions | None = None) -> list[DataError]:
    """Every problem in every file (used by ``uqpot data check``)."""
    problems: list[DataError] = []
    for p in paths:
        read_structures(p, options, collect=problems)
    return problems


def write_extxyz(dataset: StructureDataset, path) -> None:
    """Writes structures as extended XYZ in uqpot's units (kcal/mol, Å), atomically."""
    import ase.io

    from ..core.provenance import atomic_write

    with atomic_write(path) as tmp:
        if len(dataset):
            ase.io.write(str(tmp), [s.to_atoms() for s in dataset], format="extxyz")
        else:
            tmp.write_text("")  # an empty set is an empty file
