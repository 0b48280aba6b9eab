"""ASE calculator for a uqpot model.

Results are given in the units the caller asks for: ASE's eV and eV/Å by default (so ASE's dynamics,
optimisers and NEB work unchanged), or kcal/mol and kcal/mol/Å with ``energy_unit="kcal/mol"``.  The model
works in kcal/mol and Å (its file records them); the conversion uses :mod:`uqpot.core.units`.
"""

from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, all_changes

from ..core import fields as F
from ..data.batch import collate
from ..data.structures import Structure
from ..evaluation.predict import check_elements
from ..core.units import ENERGY_UNIT, LENGTH_UNIT, energy_factor, length_factor


class UQPotCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress", F.STRESS_VARIANCE,
                              F.UNCERTAINTY, F.UNCERTAINTY_ATOM]

    def __init__(self, model, energy_unit: str = "eV", length_unit: str = "Å", device=None,
                 layout: str = "sparse", **kwargs):
        super().__init__(**kwargs)
        self.layout = layout  # pair layout of the model call (see uqpot.data.batch.choose_layout)
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from ..evaluation.models import load

            model = load(model, device=device)
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        # factor from the model's units to the caller's
        self.energy_to_out = energy_factor(ENERGY_UNIT) / energy_factor(energy_unit)
        self.length_in = length_factor(length_unit) / length_factor(LENGTH_UNIT)  # caller length -> Å
        self.energy_unit, self.length_unit = energy_unit, length_unit

    def _check_stress(self, s) -> None:
        from ase.calculators.calculator import PropertyNotImplementedError

        if not bool(s.pbc.all()):
            raise PropertyNotImplementedError("stress needs a periodic cell (pbc on all three axes)")
        from ..evaluation.evaluate import gives_stress

        if not gives_stress(self.model):
            raise PropertyNotImplementedError(f"{self.model.method} gives no stress (nor a stress uncertainty); "
                                              "a plain potential and the ensemble do")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        s = Structure.from_atoms(self.atoms)
        s.positions = s.positions * self.length_in
        s.cell = s.cell * self.length_in
        from ..data.structures import StructureDataset

        check_elements(self.model, StructureDataset([s]))
        batch = collate([s], cutoff=self.model.cutoff, dtype=self.model.dtype, device=self.model.device,
                        layout=self.layout)
        want_stress = bool({"stress", F.STRESS_VARIANCE} & set(properties))
        if want_stress:
            self._check_stress(s)
        out = self.model(batch, compute_forces=True, create_graph=False, **({"compute_stress": True} if want_stress
                                                                          else {}))
        energy = float(out[F.ENERGY].detach().cpu()[0]) * self.energy_to_out
        forces = out[F.FORCES].detach().cpu().double().numpy() * self.energy_to_out * self.length_in
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = forces
        if F.ATOMIC_ENERGY in out:  # an ensemble's combined output has no per-atom energies
            self.results["energies"] = out[F.ATOMIC_ENERGY].detach().cpu().double().numpy() * self.energy_to_out
            # atomic energies exclude the per-element references; add them for a consistent sum
            atomref = self.model.potential.atomref if hasattr(self.model, "potential") else self.model.atomref
            ref = atomref[torch.as_tensor(s.numbers)].cpu().numpy() * self.energy_to_out
            self.results["energies"] = self.results["energies"] + ref
        if F.STRESS in out:  # σ in energy per volume; ASE's Voigt order xx, yy, zz, yz, xz, xy
            sigma = out[F.STRESS].detach().cpu().double().numpy()[0] * self.energy_to_out * self.length_in ** 3
            self.results["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            if F.STRESS_VARIANCE in out:
                var = out[F.STRESS_VARIANCE].detach().cpu().double().numpy()[0] * (self.energy_to_out
                                                                                   * self.length_in ** 3) ** 2
                self.results[F.STRESS_VARIANCE] = var[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        if F.UNCERTAINTY in out:  # UQ methods: U in the method's own unit (see its uncertainty_description)
            self.results[F.UNCERTAINTY] = float(out[F.UNCERTAINTY].detach().cpu()[0])
            self.results[F.UNCERTAINTY_ATOM] = out[F.UNCERTAINTY_ATOM].detach().cpu().double().numpy()
