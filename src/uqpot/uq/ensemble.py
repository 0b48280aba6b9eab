"""Deep ensemble (paper Eq. 2-5): M networks from different seeds trained on the same data.

``splits``: ``shared`` (default) trains every member on the run's split; ``per_member`` gives each member its
own train/validation split of the same pool (the run's training and validation structures together, the same
sizes; member m's split drawn from its seed), as the SI says of its models ("all models were trained on
different splits of the data set", SI Sec. I).  Per-member splits stack the members' batches as independent
batch orders do (:mod:`uqpot.train.member_order`: one molecule, dense layout); the reference energies are
fitted on the run's training split, shared by all members; the calibration uses the run's validation split,
part of which the other members trained on.  Measured on the ammonia out-of-domain split (README,
``benchmarks/ensemble_diversity.py --compare splits``).

Prediction: the members' mean energy and forces (Eq. 2-3).  Uncertainty: the variance of the forces over
members with the 1/(M-1) estimator, averaged over Cartesian components per atom; averaged over atoms it is
σ²_F(x) of Eq. 5 (in (kcal/mol/Å)²).  The energy variance σ²_E (Eq. 4) is returned as well.  The members
are one stacked module evaluated in one batched call, or, for members of different backbones (``uqpot wrap
A.pt B.pt C.pt --method ensemble``), a committee evaluated member by member (:mod:`uqpot.nn.committee`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from pydantic import Field

from ..core import fields as F
from ..nn.committee import Committee
from ..nn.potential import SHARED_BUFFERS
from .base import UQMethod, register_method
from .options import UQOptions


class EnsembleOptions(UQOptions):
    """``uq: {method: ensemble, members: M}``."""

    method: Literal["ensemble"] = "ensemble"
    members: int = Field(5, ge=2, description="ensemble size (SI: 5 for rMD17 and ammonia, 3 for silica)")
    splits: Literal["shared", "per_member"] = Field(
        "shared", description="every member on the run's split, or each its own train/val split of the same pool")
    potential_keys: ClassVar[frozenset] = frozenset({"members"})


@register_method("ensemble")
class Ensemble(UQMethod):
    compiles = True
    md_compiles = True
    runs_first = True
    colour = "#1f77b4"
    options = EnsembleOptions
    uncertainty_description = "force variance over ensemble members σ²_F, (kcal/mol/Å)² (Eq. 5)"
    needs_forces_for_uncertainty = True
    gives_stress = True

    @classmethod
    def members_for(cls, options: EnsembleOptions) -> int:
        return int(options.members)

    def __init__(self, potential: dict, reduction: str = "mean", splits: str = "shared"):
        super().__init__(potential, reduction)
        if self.potential.members < 2:
            raise ValueError("an ensemble needs at least 2 members (uq.members >= 2)")
        if splits not in ("shared", "per_member"):
            raise ValueError(f"unknown splits {splits!r}; use shared or per_member")
        #: read by the trainer (:mod:`uqpot.train.member_order`)
        self.member_splits = splits

    def method_hparams(self) -> dict:
        return {} if self.member_splits == "shared" else {"splits": self.member_splits}

    def combine(self, out: dict, batch) -> dict:
        res = {F.ENERGY: out[F.ENERGY].mean(0), F.ENERGY_VARIANCE: out[F.ENERGY].var(0, correction=1),
               F.ENERGY_MEMBERS: out[F.ENERGY], F.ATOMIC_ENERGY_MEMBERS: out[F.ATOMIC_ENERGY]}
        if F.FEATURES in out:  # a committee of different backbones has no common feature space
            res[F.FEATURES_MEMBERS] = out[F.FEATURES]
        if F.FORCES in out:
            forces = out[F.FORCES]
            res[F.FORCES] = forces.mean(0)
            res[F.FORCES_MEMBERS] = forces
            res[F.UNCERTAINTY_ATOM] = forces.var(0, correction=1).mean(-1)
        else:  # without forces, fall back on the spread of the atomic energies
            res[F.UNCERTAINTY_ATOM] = out[F.ATOMIC_ENERGY].var(0, correction=1)
        if F.STRESS in out:  # committee stress and its variance per component (as Eq. 4-5 for forces)
            res[F.STRESS], res[F.STRESS_MEMBERS] = out[F.STRESS].mean(0), out[F.STRESS]
            res[F.STRESS_VARIANCE] = out[F.STRESS].var(0, correction=1)
        return res

    @classmethod
    def from_members(cls, potentials, reduction: str = "mean") -> "Ensemble":
        """An ensemble of M separately trained single potentials (same architecture, same training set):
        member m is potential m's weights, so that the ensemble equals evaluating each model alone."""
        potentials = list(potentials)
        if len(potentials) < 2:
            raise ValueError("an ensemble needs at least 2 member models")
        hp0 = {k: v for k, v in potentials[0].hparams.items() if k not in ("members", "seeds")}
        for m, p in enumerate(potentials):
            if p.members != 1:
                raise ValueError(f"member {m + 1} is not a single network (members = {p.members})")
            hp = {k: v for k, v in p.hparams.items() if k not in ("members", "seeds")}
            diff = [f"{k} ({hp0.get(k)!r} in member 1, {hp.get(k)!r} in member {m + 1})"
                    for k in sorted(set(hp0) | set(hp), key=str) if hp0.get(k) != hp.get(k)]
            if diff:
                raise ValueError(f"member models differ in their hyper-parameters: {'; '.join(diff)}")
        seeds = [int(p.hparams["seeds"][0]) for p in potentials]
        ens = cls({**hp0, "members": len(potentials), "seeds": seeds}, reduction)
        ens = ens.to(device=potentials[0].device, dtype=potentials[0].dtype)  # float64 members stay float64
        state = ens.potential.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                parts = [p.state_dict()[name] for p in potentials]
                if name in SHARED_BUFFERS:
                    if any(not torch.equal(parts[0], x) for x in parts[1:]):
                        raise ValueError(f"member models differ in {name}: trained on different data?")
                    value.copy_(parts[0])
                else:
                    value.copy_(torch.cat(parts, 0))
        return ens

    @classmethod
    def from_committee(cls, potentials, reduction: str = "mean") -> "Ensemble":
        """An ensemble whose members are M trained single networks of any backbones, hyper-parameters and
        reference energies (:class:`uqpot.nn.committee.Committee`); member m is network m, so that the
        ensemble equals evaluating each network alone.  Whether the members belong together (one level of
        theory: :func:`uqpot.nn.committee.energy_offsets`) is the caller's check (``uqpot wrap``)."""
        committee = Committee.from_networks(potentials)
        ens = cls(dict(committee.hparams), reduction).to(device=committee.device, dtype=committee.dtype)
        ens.potential.load_state_dict(committee.state_dict(), strict=True)
        return ens
