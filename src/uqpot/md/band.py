"""All images of a nudged elastic band in one model call.

ASE's NEB asks each image for its energy and forces in turn; with one calculator shared by the images every
request recomputes (the shared calculator's cached atoms are always another image's), about 3-4 model calls
per image per optimiser step.  On a small molecule each call is dominated by fixed overhead, so a band of 11
images cost some 30 model calls per step: half of an ammonia active-learning generation's wall time went to
its NEB.  Here every image has a light calculator of its own, all of them reading one :class:`BandEvaluator`
that evaluates the whole band (its current positions) in one batched model call and keeps the result until
any image moves.  The numbers are the model's own: the same structures through the same model, batched.

Units: the model works in kcal/mol and Å; ASE (the NEB, its optimisers) in eV and eV/Å; the conversion uses
:mod:`uqpot.core.units`.
"""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ..core import fields as F
from ..core.units import EV_TO_KCAL_PER_MOL
from ..data.batch import collate
from ..data.structures import Structure, StructureDataset
from ..evaluation.predict import check_elements


class BandEvaluator:
    """Energies (eV) and forces (eV/Å) of every image of ``images`` from one model call, recomputed only
    when some image's positions changed since the last call.  ``calls`` counts the model calls."""

    def __init__(self, model, images: list[Atoms]):
        self.model = model.eval()
        self.images = images
        self.calls = 0
        self._key: np.ndarray | None = None
        self._energies: np.ndarray | None = None
        self._forces: list[np.ndarray] = []
        structures = [Structure.from_atoms(a) for a in images]
        check_elements(self.model, StructureDataset(structures))

    def _positions(self) -> np.ndarray:
        return np.concatenate([a.positions for a in self.images])

    def result(self, index: int) -> tuple[float, np.ndarray]:
        """(energy in eV, forces in eV/Å) of image ``index`` at the band's current positions."""
        key = self._positions()
        if self._key is None or key.shape != self._key.shape or not np.array_equal(key, self._key):
            self._evaluate()
            self._key = key.copy()
        return float(self._energies[index]), self._forces[index]

    def _evaluate(self) -> None:
        structures = [Structure.from_atoms(a) for a in self.images]
        batch = collate(structures, cutoff=self.model.cutoff, dtype=self.model.dtype, device=self.model.device)
        out = self.model(batch, compute_forces=True, create_graph=False)
        self.calls += 1
        self._energies = out[F.ENERGY].detach().cpu().double().numpy() / EV_TO_KCAL_PER_MOL
        forces = out[F.FORCES].detach().cpu().double().numpy() / EV_TO_KCAL_PER_MOL
        bounds = np.cumsum([0] + [len(a) for a in self.images])
        self._forces = [forces[bounds[k]:bounds[k + 1]] for k in range(len(self.images))]


class BandImageCalculator(Calculator):
    """The calculator of one image of a band: its results come from the band's :class:`BandEvaluator`."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, evaluator: BandEvaluator, index: int, **kwargs):
        super().__init__(**kwargs)
        self.evaluator, self.index = evaluator, index

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        energy, forces = self.evaluator.result(self.index)
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = forces.copy()


def attach_band(model: torch.nn.Module, images: list[Atoms]) -> BandEvaluator:
    """Gives every image of ``images`` a calculator reading one :class:`BandEvaluator` of ``model``."""
    evaluator = BandEvaluator(model, images)
    for k, im in enumerate(images):
        im.calc = BandImageCalculator(evaluator, k)
    return evaluator
