"""The ammonia system (the paper's sections 2.2, 2.5 and 3.2): its data build, MD campaign, stability
criteria, attack rate and preset files, registered as ``ammonia``."""

from __future__ import annotations

from ...md.stability import StabilityCriteria
from ..base import System, register_system
from .build import AmmoniaConfig, build_ammonia


@register_system
class Ammonia(System):
    """NH3: 78 training geometries near the minimum, 200 out-of-domain test geometries (:mod:`.build`)."""

    name = "ammonia"
    config = AmmoniaConfig
    preset_files = {"quick": "ammonia_quick.yaml", "medium": "ammonia_medium.yaml", "paper": "ammonia.yaml"}
    #: the paper's campaign: 100 runs x 5 ps at 300-1000 K, 0.5 fs steps, Nosé-Hoover NVT
    md_preset = dict(runs=100, temperatures_K=[300.0, 500.0, 750.0, 1000.0], duration_fs=5000.0,
                     timestep_fs=0.5, skin=2.0)
    energy_floor = True
    attack_lr = 5e-5  # the SI's (Å per step, before paper_equivalent_lr)
    has_neb = True  # the NH3 inversion barrier (uqpot.loop.md)
    build_uses_executor = True  # the build's oracle labels run in batches on the executor

    def plan_sizes(self, data_config) -> tuple[int, int, int]:
        """``n_train`` geometries, ``test_per_bin`` per bin of ``test_bin_width`` up to ``test_e_max``; 4 atoms."""
        n_test = int(round(data_config.test_e_max / data_config.test_bin_width)) * data_config.test_per_bin
        return data_config.n_train, n_test, 4

    def stability_criteria(self, ground_state_energy: float | None = 0.0, **overrides) -> StabilityCriteria:
        """Paper: distances < 0.75 Å, N–H > 2.25 Å, energy below the ground state (kcal/mol; 0 in the paper,
        where energies are relative to the training minimum; ``None`` switches the energy test off).  The
        upper bound applies to N–H pairs (a dissociated hydrogen: an H–H distance above 2.25 Å is possible
        in an intact NH3 at high temperature)."""
        base = dict(min_distance=0.75, max_distance=2.25, max_distance_pairs=(("N", "H"),),
                    min_energy=ground_state_energy)
        return StabilityCriteria(**{**base, **overrides})

    def build(self, out, *, config, oracle, store=None, executor=None, console=None, progress: bool = True) -> dict:
        return build_ammonia(out, store=store, oracle=oracle, config=config, executor=executor,
                             progress=progress, console=console)
