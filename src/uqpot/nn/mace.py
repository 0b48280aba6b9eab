"""MACE (Batatia et al., NeurIPS 2022; ``mace-torch``) as a uqpot backbone (:mod:`uqpot.nn.backbone`).

The network is MACE's own ``ScaleShiftMACE``, built from plain hyper-parameters (``hparams["mace"]``: irreps
as strings, classes by name), so that a uqpot model file holds its state dict and never a pickled object.
uqpot feeds it the data layer's edge lists (MACE reads no dense layout) and takes from it:

* the atomic energies without the isolated-atom energies E0 (uqpot keeps E0 as its float64 reference
  energies e_ref(Z), fitted on the training set or moved over from a converted MACE file), times the
  energy scale (the training force RMS for a network trained here; 1 eV in kcal/mol for a MACE file, whose
  energies are in eV);
* ξ, the invariant (0e) node features of the last interaction: the input of MACE's last readout (what GMM,
  MVE and evidential heads read);
* h̃, the inputs of the final linear map of every readout (the 0e features of each linear readout, the
  gated hidden layer of the non-linear one) and a constant for the scale-shift's shift: the atomic energy
  is linear in h̃, which makes it LLPR's last layer (as in the LLPR of Bigi et al. 2024 on MACE).

Members.  M networks are held as one set of stacked parameters (leading member axis, as every uqpot
parameter, so per-member Adam, clipping and early stopping work unchanged); member m runs MACE's forward
with its slice of them (``torch.func.functional_call``), one call per member: MACE is not vectorised over
members as uqpot's PaiNN is.  Member m is initialised with ``torch.manual_seed(seeds[m])``.

Importing.  ``import mace`` sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for the whole process, which
would make every later ``torch.load`` without an explicit ``weights_only`` run pickled code; and ``import
e3nn`` loads a constants file that holds a ``slice``.  :func:`import_mace` allows ``slice`` for
``weights_only`` loads and restores the environment variable, so ``weights_only`` stays PyTorch's default.
"""

from __future__ import annotations

import re

import os
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from ..core import fields as F
from ..data.batch import AtomsBatch
from .backbone import BackboneOptions, register_backbone
from .potential import MAX_Z, Potential

_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
INSTALL_HINT = "MACE needs mace-torch: pip install 'uqpot[mace]'"

F.register("last_layer_features", True, "kcal/mol", "inputs of the final linear readout maps (LLPR's last layer)")
LAST_LAYER = "last_layer_features"


def import_mace():
    """``mace.modules`` (and e3nn), imported without changing ``torch.load``'s ``weights_only`` default."""
    prior = os.environ.get(_ENV)
    torch.serialization.add_safe_globals([slice])  # e3nn's constants.pt holds slices
    import contextlib
    import io

    try:
        import e3nn.o3  # noqa: F401  (loads its constants with weights_only)

        with contextlib.redirect_stdout(io.StringIO()):  # mace prints a note on GPU kernels it lacks
            import mace.modules as modules
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    finally:
        if prior is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = prior
    return modules


def hidden_irreps(channels: int, max_L: int) -> str:
    """``channels`` features of every order l <= max_L, with MACE's parities (0e, 1o, 2e, ...)."""
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_L + 1))


def mace_config(channels: int = 32, max_L: int = 1, correlation: int = 3, interactions: int = 2,
                cutoff: float = 5.0, num_bessel: int = 8, num_polynomial_cutoff: int = 5, max_ell: int = 3,
                radial_mlp: tuple = (64, 64, 64), readout_hidden: int = 16, elements=(),
                avg_num_neighbors: float = 1.0) -> dict:
    """The plain hyper-parameters of a new ``ScaleShiftMACE`` (MACE's defaults for its ``MACE`` model:
    residual interactions after a plain first one, a gated SiLU readout, Bessel radial basis)."""
    return {
        "r_max": float(cutoff), "num_bessel": int(num_bessel), "num_polynomial_cutoff": int(num_polynomial_cutoff),
        "max_ell": int(max_ell), "interaction_cls": "RealAgnosticResidualInteractionBlock",
        "interaction_cls_first": "RealAgnosticInteractionBlock", "num_interactions": int(interactions),
        "hidden_irreps": hidden_irreps(channels, max_L), "MLP_irreps": f"{int(readout_hidden)}x0e",
        "gate": "silu", "correlation": int(correlation), "avg_num_neighbors": float(avg_num_neighbors),
        "atomic_numbers": sorted(int(z) for z in elements), "radial_MLP": [int(x) for x in radial_mlp],
        "readout_cls": "NonLinearReadoutBlock", "atomic_inter_scale": 1.0, "atomic_inter_shift": 0.0,
        "heads": ["Default"],
    }


def build_mace(cfg: dict) -> nn.Module:
    """A ``ScaleShiftMACE`` from plain hyper-parameters (E0 = 0: uqpot holds the reference energies)."""
    modules = import_mace()
    from e3nn import o3

    kw = dict(cfg)
    unknown = set(kw) - set(_MACE_KEYS)
    if unknown:
        raise ValueError(f"unknown MACE hyper-parameter(s): {', '.join(sorted(unknown))}")
    zs = [int(z) for z in kw["atomic_numbers"]]
    heads = list(kw.get("heads", ["Default"]))
    kw["interaction_cls"] = modules.interaction_classes[kw["interaction_cls"]]
    kw["interaction_cls_first"] = modules.interaction_classes[kw["interaction_cls_first"]]
    kw["readout_cls"] = modules.readout_classes[kw.get("readout_cls", "NonLinearReadoutBlock")]
    kw["gate"] = modules.gate_dict[str(kw.get("gate"))]
    kw["hidden_irreps"] = o3.Irreps(kw["hidden_irreps"])
    kw["MLP_irreps"] = o3.Irreps(kw["MLP_irreps"])
    if kw.get("edge_irreps") is not None:
        kw["edge_irreps"] = o3.Irreps(kw["edge_irreps"])
    kw["num_elements"] = len(zs)
    kw["atomic_energies"] = np.zeros((len(heads), len(zs)) if len(heads) > 1 else len(zs))
    for key in ("atomic_inter_scale", "atomic_inter_shift"):
        v = kw[key]
        kw[key] = np.asarray(v, dtype=np.float64) if isinstance(v, (list, tuple)) else float(v)
    import warnings

    with warnings.catch_warnings():  # e3nn's TorchScript code generation warns about annotations it ignores
        warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
        return modules.ScaleShiftMACE(**kw)


#: the hyper-parameters uqpot passes to ScaleShiftMACE (a converted file's others must be at their defaults)
_MACE_KEYS = ("r_max", "num_bessel", "num_polynomial_cutoff", "max_ell", "interaction_cls",
              "interaction_cls_first", "num_interactions", "hidden_irreps", "MLP_irreps", "gate", "correlation",
              "avg_num_neighbors", "atomic_numbers", "radial_MLP", "radial_type", "readout_cls",
              "atomic_inter_scale", "atomic_inter_shift", "heads", "pair_repulsion", "distance_transform",
              "use_reduced_cg", "use_so3", "use_agnostic_product", "use_last_readout_only",
              "use_edge_irreps_first", "edge_irreps", "apply_cutoff")


def _zero_e_slices(irreps) -> list[int]:
    """Column indices of the invariant (0e) channels of a feature vector with these irreps."""
    idx: list[int] = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        if ir.l == 0 and ir.p == 1:
            idx.extend(range(sl.start, sl.stop))
    return idx


class MACEOptions(BackboneOptions):
    """``model.kind: mace``: a MACE network (``pip install 'uqpot[mace]'``; :mod:`uqpot.nn.mace`).  Defaults:
    a small MACE (MACE's own defaults are 128 channels, max_L 1, correlation 3, 2 interactions, 5 Å)."""

    kind: Literal["mace"]
    channels: int = Field(32, ge=1, description="features per irrep order (MACE's num_channels)")
    max_L: int = Field(1, ge=0, le=3, description="highest order l of the hidden features")
    correlation: int = Field(3, ge=1, le=4, description="body order of the product basis minus one")
    interactions: int = Field(2, ge=1)
    cutoff: float = Field(5.0, gt=0.0)
    num_bessel: int = Field(8, ge=1)
    num_polynomial_cutoff: int = Field(5, ge=1)
    max_ell: int = Field(3, ge=0, le=4, description="order of the edges' spherical harmonics")
    radial_mlp: list[int] = Field([64, 64, 64], min_length=1)
    readout_hidden: int = Field(16, ge=1, description="width of MACE's non-linear readout")

    @field_validator("radial_mlp")
    @classmethod
    def _positive(cls, v):
        if any(x < 1 for x in v):
            raise ValueError("radial_mlp widths must be >= 1")
        return v

    def potential_hparams(self, members: int, seeds: list[int], train=None) -> dict:
        return potential_hparams(self, members, seeds, train)


@register_backbone("mace", options=MACEOptions)
class MACEPotential(Potential):
    """A uqpot potential whose network is MACE (see the module docstring); kind ``potential`` with
    ``hparams["backbone"] == "mace"``."""

    title = "MACE"
    supports_dense = False
    compilable = False
    forward_ad = False  # not checked for mace-torch's modules: LLPR stays on reverse mode

    @classmethod
    def check_available(cls) -> None:
        import_mace()

    def __init__(self, mace: dict, cutoff: float, features: int | None = None, readout_hidden: int | None = None,
                 activation: str = "silu", members: int = 1, seeds: list[int] | None = None, head: int = 0):
        """``features`` and ``readout_hidden`` follow from ``mace`` (they are stored for the heads that read
        them, and checked when given)."""
        nn.Module.__init__(self)
        seeds = list(seeds) if seeds is not None else [int(torch.initial_seed()) % 2**31 + m for m in range(members)]
        if len(seeds) != members:
            raise ValueError(f"{members} members need {members} seeds, got {len(seeds)}")
        if abs(float(mace["r_max"]) - float(cutoff)) > 1e-9:
            raise ValueError(f"cutoff {cutoff} differs from MACE's r_max {mace['r_max']}")
        nets = []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(s))
                nets.append(build_mace(mace))
        template = nets[0]
        self._template = [template]  # not a sub-module: its tensors are replaced by the stacked ones per call
        self.members, self.cutoff, self.head = members, float(cutoff), int(head)
        self._names = [n for n, _ in template.named_parameters()]
        self._bnames = [n for n, _ in template.named_buffers()]
        self.stack = nn.Module()
        for n in self._names:
            p = [dict(net.named_parameters())[n] for net in nets]
            self.stack.register_parameter(_key(n), nn.Parameter(torch.stack([x.detach() for x in p]),
                                                                requires_grad=p[0].requires_grad))
        for n in self._bnames:
            self.stack.register_buffer(_key(n), torch.stack([dict(net.named_buffers())[n] for net in nets]))
        zs = [int(z) for z in mace["atomic_numbers"]]
        z_index = torch.full((MAX_Z + 1,), -1, dtype=torch.int64)
        z_index[zs] = torch.arange(len(zs))
        self.register_buffer("z_index", z_index, persistent=False)
        self._readout_plan = self._plan_readouts(template)
        xi_dim = len(self._readout_plan[-1][2])
        ll_dim = sum(len(c) if kind == "linear" else width for kind, width, c in self._readout_plan) + 1
        # features: size of ξ (heads of MVE, evidential, shallow ensembles read it); readout_hidden: the width
        # of MACE's non-linear readout (the hidden size of heads added on ξ)
        last_kind, last_width, _ = self._readout_plan[-1]
        self.hparams = dict(backbone="mace", mace=dict(mace), cutoff=float(cutoff), features=xi_dim,
                            readout_hidden=last_width if last_kind == "nonlinear" else xi_dim,
                            activation=activation, members=members,
                            seeds=[int(s) for s in seeds], head=int(head))
        self._ll_dim = ll_dim
        for key, given in (("features", features), ("readout_hidden", readout_hidden)):
            if given is not None and int(given) != self.hparams[key]:
                raise ValueError(f"{key} {given} does not match the MACE network's {self.hparams[key]}")
        self._capture: list = []
        self._register_hooks(template)
        self._register_reference_buffers()
        self.known_elements[zs] = True

    # ----------------------------------------------------------------- structure of the readouts
    @staticmethod
    def _plan_readouts(template) -> list[tuple[str, int, list[int]]]:
        """Per readout: its kind, the width of its last-layer input and the 0e columns of its input."""
        plan = []
        for ro in template.readouts:
            if hasattr(ro, "linear_2"):
                plan.append(("nonlinear", int(ro.linear_2.irreps_in.dim), _zero_e_slices(ro.linear_1.irreps_in)))
            elif hasattr(ro, "linear"):
                cols = _zero_e_slices(ro.linear.irreps_in)
                plan.append(("linear", len(cols), cols))
            else:
                raise ValueError(f"MACE readout {type(ro).__name__} is not supported by uqpot")
        return plan

    def _register_hooks(self, template) -> None:
        capture = self._capture

        for k, ro in enumerate(template.readouts):
            ro.register_forward_pre_hook(lambda mod, args, k=k: capture.append(("in", k, args[0])))
            if hasattr(ro, "linear_2"):
                ro.linear_2.register_forward_pre_hook(lambda mod, args, k=k: capture.append(("hidden", k, args[0])))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._template[0]._apply(fn)
        return self

    # ----------------------------------------------------------------- the backbone interface
    @property
    def last_layer_dim(self) -> int:
        return self._ll_dim

    def block_of(self, name: str):
        """MACE: layer k's interaction and product basis are block k; every layer's readout (MACE sums the
        readouts of all layers into the energy) is the readout; the node embedding is the embedding."""
        m = re.match(r"stack\.(interactions|products)__(\d+)__", name)
        if m:
            return int(m.group(2))
        return "readout" if name.startswith("stack.readouts__") else "embedding"

    def last_layer_features(self, out: dict) -> torch.Tensor:
        return out[LAST_LAYER] * self.energy_scale

    def fit_reference(self, dataset) -> None:
        missing = sorted(set(dataset.elements()) - set(self.elements_of_network()))
        if missing:
            raise ValueError(f"elements {missing} are not among this MACE network's {self.elements_of_network()}")
        super().fit_reference(dataset)

    def elements_of_network(self) -> list[int]:
        return [int(z) for z in self.hparams["mace"]["atomic_numbers"]]

    def _graph_inputs(self, batch: AtomsBatch, offsets: torch.Tensor | None = None) -> dict:
        if batch.dense:
            raise ValueError("MACE reads edge lists: evaluate it on the sparse layout")
        idx = self.z_index.index_select(0, batch.numbers)
        attrs = torch.nn.functional.one_hot(idx, len(self.hparams["mace"]["atomic_numbers"])).to(self.dtype)
        ptr = torch.zeros(batch.num_structures + 1, dtype=torch.int64, device=idx.device)
        ptr[1:] = torch.cumsum(batch.n_atoms, 0)
        i, j = batch.edge_index[0], batch.edge_index[1]
        # MACE: vectors = r[receiver] - r[sender] + shift; uqpot's edge (i, j) has r_ij = r_j - r_i + S·cell and
        # sends from neighbour j to centre i: receiver i, sender j, shift -S·cell
        return {"node_attrs": attrs, "edge_index": torch.stack([j, i]),
                "shifts": -(batch.edge_offsets() if offsets is None else offsets),
                "unit_shifts": -batch.cell_shifts, "cell": batch.cell.reshape(-1, 3), "batch": batch.batch,
                "ptr": ptr, "head": torch.full((batch.num_structures,), self.head, dtype=torch.int64,
                                               device=idx.device)}

    def _member_state(self, m: int) -> dict:
        state = {n: getattr(self.stack, _key(n))[m] for n in self._names}
        state.update({n: getattr(self.stack, _key(n))[m] for n in self._bnames})
        return state

    def _energy_outputs(self, batch: AtomsBatch, pos_m: torch.Tensor, offsets: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        data = self._graph_inputs(batch)
        template = self._template[0]
        e_atom, xi, last = [], [], []
        for m in range(self.members):
            p = pos_m[m]
            p = p if p.requires_grad else p.detach()  # MACE sets requires_grad on its positions
            inputs = dict(data, positions=p)
            if offsets is not None:  # strained image offsets of this member (stress)
                inputs["shifts"] = -offsets[m if offsets.shape[0] > 1 else 0]
            self._capture.clear()
            out = torch.func.functional_call(template, self._member_state(m), (inputs,),
                                             {"compute_force": False, "training": self.training})
            got = {(tag, k): x for tag, k, x in self._capture}
            self._capture.clear()
            e_atom.append(out["node_energy"].to(self.dtype))
            plan = self._readout_plan
            xi.append(got[("in", len(plan) - 1)][:, plan[-1][2]])
            h = [got[("hidden", k)] if kind == "nonlinear" else got[("in", k)][:, cols]
                 for k, (kind, _, cols) in enumerate(plan)]
            last.append(torch.cat(h + [torch.ones_like(h[0][:, :1])], dim=-1))
        e_atom = torch.stack(e_atom) * self.energy_scale  # (M, N): MACE's E0 are zero, see module
        e_res = e_atom.new_zeros(self.members, batch.num_structures).index_add(1, batch.batch, e_atom)
        return {F.FEATURES: torch.stack(xi), F.ATOMIC_ENERGY: e_atom, F.ENERGY_RESIDUAL: e_res,
                LAST_LAYER: torch.stack(last)}

    def _forward_functional(self, batch):
        raise NotImplementedError("train.compile is not available for MACE networks")


def _key(name: str) -> str:
    return name.replace(".", "__")


def average_neighbours(dataset, cutoff: float, max_structures: int = 256) -> float:
    """Mean number of neighbours within ``cutoff`` per atom over (the first ``max_structures`` of) a
    training set: MACE's ``avg_num_neighbors`` normalisation of the messages."""
    from ..data.batch import collate

    n = min(len(dataset), max_structures)
    if n == 0:
        return 1.0
    b = collate([dataset[k] for k in range(n)], cutoff=cutoff)
    return max(float(b.edge_index.shape[1]) / float(b.numbers.shape[0]), 1.0)


def potential_hparams(model_cfg, members: int, seeds: list[int], train) -> dict:
    """The hyper-parameters of a new MACE potential (``model.kind: mace``) for the training set ``train``
    (its elements and mean neighbour count enter MACE's architecture)."""
    if train is None:
        raise ValueError("a MACE network is sized from its training set (elements, neighbour count)")
    m = model_cfg
    cfg = mace_config(channels=m.channels, max_L=m.max_L, correlation=m.correlation, interactions=m.interactions,
                      cutoff=m.cutoff, num_bessel=m.num_bessel, num_polynomial_cutoff=m.num_polynomial_cutoff,
                      max_ell=m.max_ell, radial_mlp=tuple(m.radial_mlp), readout_hidden=m.readout_hidden,
                      elements=train.elements(), avg_num_neighbors=average_neighbours(train, m.cutoff))
    return dict(backbone="mace", mace=cfg, cutoff=float(m.cutoff), members=members, seeds=list(seeds))
