"""The potential: PaiNN representation → atomwise energy readout → total energy → forces by autograd
(:mod:`uqpot.nn.response`).

E(x) = Σ_i [ scale · ε(ξ_i) + e_ref(Z_i) ],   F = -∂E/∂r

``e_ref`` are per-element reference energies fitted by least squares on the training set and ``scale``
is the RMS of the training forces, so that the network learns O(1) numbers.  The reference part is kept
in float64 (absolute DFT energies are ~1e5 kcal/mol, beyond float32's resolution); the total energy is
returned in float64, forces in the model's dtype.  Units: kcal/mol and Å.

With ``members = M > 1`` the module holds M networks with stacked weights (a deep ensemble evaluated in one
call); ``forward_members`` returns outputs with a leading member axis, ``forward`` squeezes it for M = 1.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from ..core import fields as F
from . import modelfile
from ..data.batch import AtomsBatch
from ..data.structures import StructureDataset
from . import response
from .backbone import build_potential, register_backbone
from .painn import PaiNN, PaiNNOptions
from .stacked import StackedMLP, init_members

MAX_Z = 118
#: buffers that every member of one stacked potential shares (fitted on the training set)
SHARED_BUFFERS = ("atomref", "energy_scale", "known_elements")


def composition_counts(dataset: StructureDataset, elements: list[int]) -> np.ndarray:
    """(structures, elements) counts of each element in each structure (the least-squares design of the
    per-element reference energies)."""
    counts = np.zeros((len(dataset), len(elements)))
    col = {z: k for k, z in enumerate(elements)}
    for n, s in enumerate(dataset):
        zs, c = np.unique(s.numbers, return_counts=True)
        counts[n, [col[int(z)] for z in zs]] = c
    return counts


@modelfile.register("potential")
@register_backbone("painn", options=PaiNNOptions)
class Potential(nn.Module):
    """The PaiNN backbone with uqpot's readout; the base of every backbone (:mod:`uqpot.nn.backbone`):
    reference energies, force scale, known elements, the member axis and the force response live here."""

    kind = "potential"
    #: the backbone's name in ``model.kind`` and in the model file's hyper-parameters (set by
    #: :func:`~uqpot.nn.backbone.register_backbone`)
    backbone = "painn"
    #: the backbone's name in messages
    title = "PaiNN"
    #: whether the network evaluates the dense pair layout of the data layer (else: edge lists only)
    supports_dense = True
    #: whether the training step and the MD call compile (``torch.compile`` on the dense layout)
    compilable = True
    #: as a model of its own (kind ``potential``, no UQ method): its training step and MD call compile where
    #: its backbone does (the UQ methods' attributes of the same names; :mod:`uqpot.train.autocompile`)
    compiles = md_compiles = True
    #: whether the energy outputs support forward-mode autograd under ``torch.func.vmap`` (LLPR's
    #: forward-mode force variance, :func:`uqpot.nn.response.structure_jacobian`); checked in the tests
    forward_ad = True
    #: whether the potential is assembled from trained networks (:func:`uqpot.nn.backbone.register_assembled`:
    #: a committee), not configured and trained as one network
    assembled = False

    @classmethod
    def from_hparams(cls, hparams: dict) -> "Potential":
        return build_potential(hparams)

    @classmethod
    def check_available(cls) -> None:
        """Raises ImportError (with the install hint) when an optional dependency of the backbone is missing."""

    def __init__(self, features: int = 128, interactions: int = 3, rbf: int = 20, cutoff: float = 5.0,
                 activation: str = "ssp", readout_hidden: int = 64, trainable_rbf: bool = True,
                 members: int = 1, seeds: list[int] | None = None, spectral_norm: float | None = None):
        super().__init__()
        seeds = list(seeds) if seeds is not None else [int(torch.initial_seed()) % 2**31 + m for m in range(members)]
        if len(seeds) != members:
            raise ValueError(f"{members} members need {members} seeds, got {len(seeds)}")
        self.hparams = dict(features=features, interactions=interactions, rbf=rbf, cutoff=float(cutoff),
                            activation=activation, readout_hidden=readout_hidden, trainable_rbf=trainable_rbf,
                            members=members, seeds=[int(s) for s in seeds])
        if spectral_norm is not None:  # only when set: files and run identities without it stay as they were
            self.hparams["spectral_norm"] = float(spectral_norm)
        self.members = members
        self.cutoff = float(cutoff)
        self.representation = PaiNN(features, interactions, rbf, cutoff, activation, trainable_rbf, MAX_Z, members,
                                    spectral_norm=spectral_norm)
        self.readout = StackedMLP(members, features, readout_hidden, 1, activation)
        init_members(self, seeds)
        self._register_reference_buffers()

    def _register_reference_buffers(self) -> None:
        """Buffers every backbone shares: per-element reference energies (float64), the energy scale and
        the elements seen in training (inputs with other elements are refused in the data path)."""
        self.register_buffer("atomref", torch.zeros(MAX_Z + 1, dtype=torch.float64))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("known_elements", torch.zeros(MAX_Z + 1, dtype=torch.bool))

    # keep the reference energies in float64 whatever dtype the network uses
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.atomref = self.atomref.to(torch.float64)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.energy_scale.dtype

    @property
    def device(self) -> torch.device:
        return self.energy_scale.device

    def elements(self) -> list[int]:
        return torch.nonzero(self.known_elements).flatten().tolist()

    @property
    def last_layer_dim(self) -> int:
        """Size d of the last-layer features h̃ (:meth:`last_layer_features`)."""
        return int(self.hparams["readout_hidden"]) + 1

    def last_layer_features(self, out: dict) -> torch.Tensor:
        """h̃_i (N, d) of one network, such that its atomic energy is linear in h̃_i (the last layer of LLPR):
        s·[act(W₁ξ_i + b₁), 1] from the features ξ of ``out`` (outputs without the member axis)."""
        ro = self.readout
        h = ro.act(ro.lin1(out[F.FEATURES].unsqueeze(0)))[0]
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=-1) * self.energy_scale

    def parameter_blocks(self) -> list[tuple[str, list[str]]]:
        """The network's parameters by block, from input to output: ``("embedding", names)``,
        ``("interaction 1", names)``, ..., ``("readout", names)`` (names as ``named_parameters`` gives them;
        every parameter in exactly one block).  Fine-tuning freezes by it (:mod:`uqpot.fit.finetune`); a
        backbone says where each parameter belongs in :meth:`block_of`."""
        blocks: dict = {}
        for n, _ in self.named_parameters():
            blocks.setdefault(self.block_of(n), []).append(n)
        interactions = sorted(k for k in blocks if isinstance(k, int))
        return ([("embedding", blocks.get("embedding", []))]
                + [(f"interaction {k + 1}", blocks[k]) for k in interactions]
                + [("readout", blocks.get("readout", []))])

    def fresh_readout(self, seeds: list[int]) -> dict[str, torch.Tensor]:
        """The readout block's parameters (name as ``named_parameters`` gives it -> (M, ...)) of this network
        built afresh, member m initialised from ``seeds[m]`` by the backbone's own initialisation (fine-tuning
        with ``finetune.readout: reinit`` takes them, :func:`uqpot.fit.finetune.reinit_readout`).  The default
        rebuilds the whole network from its hyper-parameters; a backbone whose constructor does not initialise
        its members from their seeds (SevenNet: the checkpoint's weights) overrides it."""
        hp = {k: v for k, v in self.hparams.items() if k != "backbone"}
        fresh = type(self)(**{**hp, "members": len(seeds), "seeds": [int(s) for s in seeds]})
        names = set(dict(self.parameter_blocks())["readout"])
        return {n: p.detach() for n, p in fresh.named_parameters() if n in names}

    def block_of(self, name: str):
        """The block of parameter ``name``: ``"embedding"``, the interaction's index (0-based) or
        ``"readout"``.  PaiNN: the message and update of interaction k are block k; the readout MLP is the
        readout; the atom embedding, the radial basis and the filter network are the embedding (the filter
        network's one linear map gives every interaction its filters, so it cannot be split by block)."""
        m = re.match(r"representation\.(messages|updates)\.(\d+)\.", name)
        if m:
            return int(m.group(2))
        return "readout" if name.startswith("readout.") else "embedding"

    def fit_reference(self, dataset: StructureDataset) -> None:
        """Per-element reference energies (least squares of E on composition, minimum-norm where the
        compositions do not determine them) and the force scale from a training set."""
        ref, scale, elements = reference_fit(dataset)
        self.atomref.copy_(ref)
        self.energy_scale.fill_(scale)
        self.known_elements.zero_()
        self.known_elements[elements] = True

    def fit_member_references(self, datasets: list[StructureDataset]) -> None:
        """Every member its own reference energies and force scale, member m from ``datasets[m]``: replicates
        of a study stacked into one training (:mod:`uqpot.fit.replicates`), each on its own training set, as
        each would be fitted alone.  ``atomref`` becomes (M, Z) and ``energy_scale`` (M,); the elements known
        are those of every set.  Such a stack is split into its replicates before it is saved."""
        if len(datasets) != self.members:
            raise ValueError(f"{self.members} members need {self.members} training sets, got {len(datasets)}")
        fits = [reference_fit(ds) for ds in datasets]
        dev = self.energy_scale.device
        self.atomref = torch.stack([f[0] for f in fits]).to(dev)
        self.energy_scale = torch.tensor([f[1] for f in fits], dtype=self.energy_scale.dtype, device=dev)
        self.known_elements.zero_()
        for f in fits:
            self.known_elements[f[2]] = True

    def member_scale(self) -> torch.Tensor:
        """The energy scale, shaped to multiply outputs (M, N) member by member: a scalar, or (M, 1) where every
        member has its own (:meth:`fit_member_references`)."""
        return self.energy_scale if self.energy_scale.dim() == 0 else self.energy_scale.view(-1, 1)

    def reference_energy(self, batch: AtomsBatch) -> torch.Tensor:
        """Σ e_ref(Z_i) per structure (float64): (B,), or (M, B) where every member has its own references."""
        if self.atomref.dim() == 2:
            e = self.atomref.index_select(1, batch.numbers)
            return torch.zeros(self.atomref.shape[0], batch.num_structures, dtype=torch.float64,
                               device=e.device).index_add(1, batch.batch, e)
        e = self.atomref.index_select(0, batch.numbers)
        return torch.zeros(batch.num_structures, dtype=torch.float64, device=e.device).index_add(0, batch.batch, e)

    def representation_inputs(self, batch: AtomsBatch, pos_m: torch.Tensor, offsets: torch.Tensor | None = None):
        """(numbers, vectors, graph, dense) of the representation (:meth:`PaiNN.context`) for member
        positions (M, N, 3) on the batch's layout; ``offsets`` (M, E, 3): image offsets of the edges
        (default: the batch's, S·cell)."""
        if batch.dense:
            M = pos_m.shape[0]
            B, n = batch.pair_mask.shape[0], batch.pair_mask.shape[1]
            idx = batch.dense_index
            pos = pos_m.new_zeros(M, B * n, 3).index_copy(1, idx, pos_m).reshape(M, B, n, 3)
            vectors = pos.unsqueeze(2) - pos.unsqueeze(3)  # (M, B, i, j, 3): r_j - r_i
            numbers = batch.numbers.new_zeros(B * n).index_copy(0, idx, batch.numbers).reshape(B, n)
            return numbers, vectors, batch.pair_mask, True
        i, j = batch.edge_index[0], batch.edge_index[1]
        vectors = pos_m.index_select(1, j) - pos_m.index_select(1, i)
        if offsets is not None:
            vectors = vectors + offsets
        elif batch.periodic:
            vectors = vectors + batch.edge_offsets()
        return batch.numbers, vectors, batch.edge_index, False

    @staticmethod
    def atom_features(batch: AtomsBatch, s: torch.Tensor) -> torch.Tensor:
        """Scalar features of the representation's layout → per atom (M, N, F)."""
        if batch.dense:
            return s.reshape(s.shape[0], -1, s.shape[-1]).index_select(1, batch.dense_index)
        return s

    def _features(self, batch: AtomsBatch, pos_m: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Per-atom features ξ (M, N, F) from member positions (M, N, 3), on the batch's layout; ``offsets``
        (M, E, 3): image offsets of the edges (default: the batch's, S·cell)."""
        numbers, vectors, graph, dense = self.representation_inputs(batch, pos_m, offsets)
        if dense:
            s, _ = self.representation.forward_dense(numbers, vectors, graph)
        else:
            s, _ = self.representation(numbers, vectors, graph)
        return self.atom_features(batch, s)

    def forward_members(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = None,
                        retain_graph: bool | None = None, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """Outputs with a leading member axis: energy (M, B) float64, forces (M, N, 3), features ξ (M, N, F),
        atomic energies (M, N) and the energy without references ``energy_residual`` (M, B); with
        ``compute_stress`` (periodic structures) the stress σ = (1/V) ∂E/∂ε (M, B, 3, 3), from the same
        backward pass as the forces.

        ``create_graph`` (default: ``self.training``) keeps the force graph for losses on forces (and for
        derivatives of force-based uncertainties)."""
        create_graph = self.training if create_graph is None else create_graph
        if compute_stress:
            return self._forward_stress(batch, create_graph, retain_graph)
        if compute_forces and torch.compiler.is_compiling():
            return self._forward_functional(batch)
        # a graph is needed for forces, or when the caller differentiates w.r.t. the positions
        with response.tracking(batch.positions, compute_forces):
            positions = response.leaf(batch.positions, compute_forces)
            # every member gets its own view of the positions so that autograd separates their forces;
            # positions (M, N, 3) give every member its own structures (same molecule: see train.member_order)
            pos_m = positions if positions.dim() == 3 else positions.unsqueeze(0).expand(self.members, -1, -1)
            out = self._energy_outputs(batch, pos_m)
            if compute_forces:
                out[F.FORCES] = response.forces(out[F.ENERGY_RESIDUAL], pos_m, create_graph, retain_graph)
        return self._with_reference(out, batch)

    def _forward_stress(self, batch: AtomsBatch, create_graph: bool, retain_graph: bool | None) -> dict:
        """Energy, forces and stress σ = (1/V) ∂E/∂ε: the energy of the positions and image offsets strained
        by a symmetric ε (:func:`uqpot.nn.response.strain`), differentiated at ε = 0 with the positions in
        one backward pass, on the edge list (periodic structures only)."""
        if batch.dense or not batch.periodic:
            raise ValueError("stress needs periodic structures on the edge list (layout 'sparse')")
        with torch.enable_grad():
            positions = response.leaf(batch.positions)
            pos_m = positions if positions.dim() == 3 else positions.unsqueeze(0).expand(self.members, -1, -1)
            eps, pos_s, offsets = response.strain(batch, self.members, pos_m)
            out = self._energy_outputs(batch, pos_s, offsets)
            forces, stress = response.forces_and_stress(out[F.ENERGY_RESIDUAL], pos_m, eps, batch.cell, create_graph,
                                                        retain_graph)
        out[F.FORCES], out[F.STRESS], out[F.STRAIN] = forces, stress, eps
        return self._with_reference(out, batch)

    def _energy_outputs(self, batch: AtomsBatch, pos_m: torch.Tensor, offsets: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        s = self._features(batch, pos_m, offsets)
        e_atom = self.readout(s).squeeze(-1) * self.member_scale()  # (M, N)
        e_res = e_atom.new_zeros(self.members, batch.num_structures).index_add(1, batch.batch, e_atom)
        return {F.FEATURES: s, F.ATOMIC_ENERGY: e_atom, F.ENERGY_RESIDUAL: e_res}

    def _with_reference(self, out: dict, batch: AtomsBatch) -> dict:
        out[F.ENERGY] = out[F.ENERGY_RESIDUAL].to(torch.float64) + self.reference_energy(batch)
        return out

    def _forward_functional(self, batch: AtomsBatch) -> dict[str, torch.Tensor]:
        """Forces as an explicit function of the positions (``torch.func.grad``), the form that
        ``torch.compile`` can trace and differentiate once more for a loss on forces (it does not support
        the double backward of ``torch.autograd.grad(create_graph=True)``).  Same values as the autograd
        path; used inside a compiled training step (``train.compile``)."""
        pos = batch.positions
        pos_m = (pos if pos.dim() == 3 else pos.unsqueeze(0).expand(self.members, -1, -1)).contiguous()

        def energy_sum(p):
            o = self._energy_outputs(batch, p)
            return o[F.ENERGY_RESIDUAL].sum(), o

        out_forces, out = response.functional_forces(energy_sum, pos_m)
        out[F.FORCES] = out_forces
        return self._with_reference(out, batch)

    def forward(self, batch: AtomsBatch, compute_forces: bool = True, create_graph: bool | None = None,
                retain_graph: bool | None = None, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """As :meth:`forward_members`; for a single network (M = 1) without the member axis."""
        out = self.forward_members(batch, compute_forces, create_graph, retain_graph, compute_stress)
        if self.members == 1:
            out = {k: v.squeeze(0) for k, v in out.items()}
        return out


def reference_fit(dataset: StructureDataset) -> tuple[torch.Tensor, float, list[int]]:
    """(per-element reference energies (Z,) float64, force scale, elements) of a training set: least squares
    of E on composition (minimum-norm where the compositions do not determine them); the scale is the RMS of
    the training forces (without forces: the spread of the residual energy per atom)."""
    elements = dataset.elements()
    counts = composition_counts(dataset, elements)
    ref = torch.zeros(MAX_Z + 1, dtype=torch.float64)
    residual = np.zeros(len(dataset))
    if dataset.has_energy:
        coef, *_ = np.linalg.lstsq(counts, dataset.energies(), rcond=None)
        ref[elements] = torch.as_tensor(coef, dtype=torch.float64)
        residual = dataset.energies() - counts @ coef
    if dataset.has_forces:
        scale = float(np.sqrt(np.mean(np.concatenate([s.forces.ravel() for s in dataset]) ** 2)))
    else:
        scale = float(np.std(residual / counts.sum(1)))
    scale = scale if np.isfinite(scale) and scale > 1e-6 else 1.0
    return ref, scale, list(elements)
