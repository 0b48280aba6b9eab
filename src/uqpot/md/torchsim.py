"""uqpot models in torch-sim (PyPI ``torch-sim-atomistic``): :class:`TorchSimModel` wraps any uqpot model
(a plain potential or a UQ method) as a torch-sim ``ModelInterface``, so torch-sim's integrators, relaxers
and autobatchers run it.

Versions: torch-sim 0.4 and later need Python ≥ 3.12; on Python 3.11 the newest is 0.3.0, which this
adapter is written and tested against (``pip install "uqpot[torchsim]"`` pins ``torch-sim-atomistic
>=0.3,<0.4``).  Its interface: ``forward(state) -> {"energy" (n_systems,), "forces" (n_atoms, 3),
"stress" (n_systems, 3, 3)}`` in metal units (eV, Å, eV/Å³), a ``SimState`` with ``positions`` (Å),
``cell`` in the column-vector convention (``row_vector_cell`` is ASE's), one ``pbc`` flag for all systems,
``atomic_numbers`` and ``system_idx``; torch-sim's time unit is ASE's (√(amu·Å²/eV) ≈ 10.18 fs).

Each call builds uqpot's batch from the state with the data layer (neighbour lists from vesin on the host,
one per system, as :func:`uqpot.data.batch.collate` does), runs the model in its own dtype and returns
energies and forces converted from kcal/mol to eV (and the stress, σ = (1/V) ∂E/∂ε in ASE's sign
convention, when ``compute_stress``).  A UQ method's U is returned per system as ``"uncertainty"`` (the
method's own unit, kcal/mol-based: not converted) and kept as :attr:`TorchSimModel.last_uncertainty`
after every call, so the uncertainty is available at every step of a torch-sim run.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core import fields as F
from ..data.batch import collate
from ..data.structures import Structure
from ..core.units import EV_TO_KCAL_PER_MOL
from .batched import _model_dtype

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # pragma: no cover - the optional dependency is missing
    raise ImportError("uqpot.md.torchsim needs torch-sim: pip install 'uqpot[torchsim]' "
                      "(torch-sim-atomistic 0.3.x on Python 3.11)") from exc


class TorchSimModel(ModelInterface):
    """A uqpot model as a torch-sim model.  ``model``: a potential, a UQ method or a model file path."""

    def __init__(self, model, compute_stress: bool = False, device=None):
        super().__init__()
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from ..evaluation.models import load

            model = load(model)
        self.model = model.eval()
        self._dtype = _model_dtype(model)
        self._device = torch.device(device) if device is not None else next(
            (t.device for t in model.parameters()), torch.device("cpu"))
        self._compute_forces = True
        self._compute_stress = bool(compute_stress)
        self.cutoff = float(model.cutoff)
        self.last_uncertainty: torch.Tensor | None = None

    def _batch(self, state):
        pos = state.positions.detach().to(torch.float64).cpu().numpy()
        cells = state.row_vector_cell.detach().to(torch.float64).cpu().numpy()
        z = state.atomic_numbers.detach().cpu().numpy()
        idx = state.system_idx.detach().cpu().numpy()
        pbc = np.full(3, bool(state.pbc))
        structures = []
        for b in range(cells.shape[0]):
            sel = idx == b
            structures.append(Structure(z[sel], pos[sel], cells[b] if pbc.any() else np.zeros((3, 3)), pbc))
        return collate(structures, cutoff=self.cutoff, dtype=self._dtype, device=self._device)

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        if isinstance(state, dict):
            import torch_sim as ts

            state = ts.SimState(**state, masses=torch.ones_like(state["positions"][:, 0]))
        batch = self._batch(state)
        out = self.model(batch, compute_forces=True, create_graph=False,
                         **({"compute_stress": True} if self._compute_stress else {}))
        dtype, device = state.positions.dtype, state.positions.device
        conv = 1.0 / EV_TO_KCAL_PER_MOL
        res = {"energy": (out[F.ENERGY].detach().to(torch.float64) * conv).to(dtype=dtype, device=device),
               "forces": (out[F.FORCES].detach().to(torch.float64) * conv).to(dtype=dtype, device=device)}
        if self._compute_stress:
            res["stress"] = (out[F.STRESS].detach().to(torch.float64) * conv).to(dtype=dtype, device=device)
        if F.UNCERTAINTY in out:
            self.last_uncertainty = out[F.UNCERTAINTY].detach()
            res["uncertainty"] = self.last_uncertainty.to(device=device)
        return res
