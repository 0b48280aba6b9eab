"""The silica system (the paper's SI section II.A and section 3.3): its data build (with trial adversarial
directions for the test set), MD campaign, stability criteria, attack rate and preset files, registered as
``silica``."""

from __future__ import annotations

from ...md.stability import StabilityCriteria
from ..base import System, register_system
from .build import build_silica
from .config import ATTACK_LR, SilicaConfig
from .trial_attack import adversarial_directions


@register_system
class Silica(System):
    """Amorphous SiO2 labelled by BKS: Table S1's MD frames and a high-energy test set (:mod:`.build`)."""

    name = "silica"
    config = SilicaConfig
    preset_files = {"quick": "silica_quick.yaml", "paper": "silica.yaml"}
    #: the paper's campaign: 10 runs x 1 ns at 2500 K, 0.25 fs steps, from the 2500 K training frames
    md_preset = dict(runs=10, temperatures_K=[2500.0], duration_fs=1.0e6, timestep_fs=0.25, skin=0.5)
    md_start_condition = "2500"
    md_start_label = "2500 K equilibration"
    periodic = True
    attack_lr = ATTACK_LR

    def plan_sizes(self, data_config) -> tuple[int, int, int]:
        """Table S1's kept MD frames, ``test_per_bin`` per test bin, the cell's atoms."""
        return data_config.n_train_frames(), data_config.test_bins * data_config.test_per_bin, data_config.atoms

    def stability_criteria(self, ground_state_energy: float | None = None, **overrides) -> StabilityCriteria:
        """Paper: kinetic energy 0, NaN or > 10,000 kcal/mol, or distances < 1.0 Å (no energy floor)."""
        base = dict(min_distance=1.0, min_kinetic_energy=0.0, max_kinetic_energy=10_000.0)
        return StabilityCriteria(**{**base, **overrides})

    def build(self, out, *, config, oracle, store=None, executor=None, console=None, progress: bool = True) -> dict:
        """The study's build: the test set along trial adversarial directions (the SI's); in process."""
        return build_silica(out, store=store, config=config, oracle=oracle, progress=progress, console=console,
                            directions=adversarial_directions)
