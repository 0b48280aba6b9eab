"""The silica system: its data build (settings :mod:`.config`, cell :mod:`.cell`, LAMMPS MD :mod:`.md`, test
set :mod:`.test_set`, the build :mod:`.build`, trial adversarial runs :mod:`.trial_attack`) and its
registry entry (:mod:`.system`)."""

from .build import build_silica, format_table  # noqa: F401
from .cell import quartz_orthorhombic, silica_cell  # noqa: F401
from .config import PAPER_MD, TABLE_S1, SilicaConfig  # noqa: F401
from .md import LammpsMD, melt_quench  # noqa: F401
from .system import Silica  # noqa: F401
