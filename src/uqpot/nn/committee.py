"""A committee of different backbones: M trained single networks (PaiNN, MACE, SevenNet, ...; each with its
own cutoff, hyper-parameters and reference energies) evaluated together as the M members of one potential,
so that a deep ensemble (paper Eq. 2-5, :class:`uqpot.uq.ensemble.Ensemble`) can mix architectures
(``uqpot wrap A.pt B.pt C.pt --method ensemble``).

It is an *assembled* backbone (:func:`uqpot.nn.backbone.register_assembled`): a model file rebuilds it from
``hparams = {backbone: committee, nets: [hparams of member 1, ...], cutoff, members, seeds}`` and the members'
state dicts (``nets.<m>.*``); no config trains it (train each member, then assemble them).

Evaluation.  The batch is built with the committee's cutoff, the largest of its members' (its neighbour list
holds every member's pairs); every member runs its own network on it, with its own positions slice of the
member axis (``pos_m[m]``, so that autograd separates the members' forces as in a stacked ensemble).  Pairs
beyond a member's own cutoff contribute nothing to it: each backbone's radial cutoff function is zero there
(PaiNN's cosine cutoff, MACE's polynomial envelope, SevenNet's), which ``tests/test_committee.py`` checks
member by member (equal to evaluating the member file alone on its own neighbour list).  Edge lists only
(``supports_dense = False``): a PaiNN member then evaluates the sparse layout, which gives its dense values.

Energies.  Each member's total energy carries its own reference energies (float64), added per member; the
committee's own ``atomref`` stays zero.  Members must predict the same energy scale for the same structures
(trained on data of one level of theory): ``uqpot wrap`` checks each member's mean energy error per atom on the
validation labels before it writes anything (:func:`uqpot.fit.wrap.energy_offsets`).

Features.  The members' per-atom features have different sizes and meanings: the committee returns none
(``features`` is absent from its outputs), so that no method can read a mixed feature space; methods on
features (GMM, MVE, evidential, LLPR) wrap one network, not a committee.

Precision.  One dtype for all members: the widest of theirs (a float64 MACE member makes the committee
float64), so that no member loses precision by being joined.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import fields as F
from ..data.batch import AtomsBatch
from .backbone import build_potential, register_assembled
from .potential import MAX_Z, Potential


@register_assembled("committee")
class Committee(Potential):
    """M single networks of any backbones as the M members of one potential (see module)."""

    title = "committee"
    supports_dense = False
    compilable = False
    forward_ad = False
    assembled = True

    def __init__(self, nets: list[dict], cutoff: float | None = None, members: int | None = None,
                 seeds: list[int] | None = None):
        nn.Module.__init__(self)
        if len(nets) < 2:
            raise ValueError("a committee needs at least 2 networks")
        built = [build_potential(dict(hp)) for hp in nets]
        for k, net in enumerate(built):
            if net.members != 1:
                raise ValueError(f"network {k + 1} of the committee is not a single network (members = {net.members})")
            if getattr(net, "assembled", False):
                raise ValueError(f"network {k + 1} of the committee is itself assembled ({net.title})")
        largest = max(float(n.cutoff) for n in built)
        if cutoff is not None and abs(float(cutoff) - largest) > 1e-9:
            raise ValueError(f"cutoff {cutoff} differs from the largest of the networks' cutoffs ({largest} Å)")
        if members is not None and int(members) != len(built):
            raise ValueError(f"members {members} differs from the {len(built)} networks of the committee")
        own_seeds = [int(n.hparams["seeds"][0]) for n in built]
        if seeds is not None and [int(s) for s in seeds] != own_seeds:
            raise ValueError(f"seeds {list(seeds)} differ from the networks' own {own_seeds}")
        self.nets = nn.ModuleList(built)
        self.members, self.cutoff = len(built), largest
        self.hparams = dict(backbone="committee", nets=[dict(n.hparams) for n in built], cutoff=largest,
                            members=len(built), seeds=own_seeds)
        self._register_reference_buffers()
        with torch.no_grad():
            self.known_elements.fill_(True)

    @classmethod
    def from_networks(cls, networks) -> "Committee":
        """A committee of trained single networks (loaded :class:`Potential` objects of any backbones): member
        m is network m, its weights and buffers; every member in the widest dtype of theirs."""
        networks = list(networks)
        dtype = torch.float64 if any(n.dtype == torch.float64 for n in networks) else networks[0].dtype
        c = cls([dict(n.hparams) for n in networks]).to(device=networks[0].device, dtype=dtype)
        with torch.no_grad():
            for net, src in zip(c.nets, networks):
                net.load_state_dict(src.state_dict(), strict=True)
            known = torch.ones(MAX_Z + 1, dtype=torch.bool, device=c.known_elements.device)
            for src in networks:
                known &= src.known_elements.to(known.device)
            c.known_elements.copy_(known)
        return c.train(networks[0].training)

    # ----------------------------------------------------------------- the backbone interface
    @property
    def last_layer_dim(self) -> int:
        raise NotImplementedError("a committee has no last layer: LLPR wraps one network")

    def last_layer_features(self, out: dict) -> torch.Tensor:
        raise NotImplementedError("a committee has no last layer: LLPR wraps one network")

    def block_of(self, name: str):
        raise NotImplementedError("a committee is not fine-tuned as one network: fine-tune each member's file")

    def fit_reference(self, dataset) -> None:
        raise NotImplementedError("a committee is assembled from trained networks; it fits nothing itself")

    def reference_energy(self, batch: AtomsBatch) -> torch.Tensor:
        """Σ e_ref(Z_i) per structure of every member (M, B), float64."""
        return torch.stack([net.reference_energy(batch) for net in self.nets])

    def _with_reference(self, out: dict, batch: AtomsBatch) -> dict:
        out[F.ENERGY] = out[F.ENERGY_RESIDUAL].to(torch.float64) + self.reference_energy(batch)
        return out

    def _energy_outputs(self, batch: AtomsBatch, pos_m: torch.Tensor, offsets: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        e_atom, e_res = [], []
        for m, net in enumerate(self.nets):
            off = None if offsets is None else offsets[m:m + 1] if offsets.shape[0] > 1 else offsets
            out = net._energy_outputs(batch, pos_m[m:m + 1], off)
            e_atom.append(out[F.ATOMIC_ENERGY][0].to(self.dtype))
            e_res.append(out[F.ENERGY_RESIDUAL][0].to(self.dtype))
        return {F.ATOMIC_ENERGY: torch.stack(e_atom), F.ENERGY_RESIDUAL: torch.stack(e_res)}

    def _forward_functional(self, batch):
        raise NotImplementedError("train.compile is not available for a committee")
