"""The rMD17 system (the paper's section 2.2 and 3.1): read, not built (:mod:`uqpot.data.sets.rmd17_fetch` fetches
the published archive and its official splits); its study trains every method on fixed splits (a grid),
so it has no oracle build, no MD campaign and no attacks.  Registered as ``rmd17``."""

from __future__ import annotations

from .base import System, register_system


@register_system
class RMD17(System):
    """Revised MD17: ten molecules, five official splits (800/200/1000), read from the fetched archive."""

    name = "rmd17"
    study = "grid"
    preset_files = {"quick": "rmd17_quick.yaml", "paper": "rmd17.yaml"}
