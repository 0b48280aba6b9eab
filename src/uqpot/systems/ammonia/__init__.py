"""The ammonia system: its data build (:mod:`.build`, :mod:`.modes`) and its registry entry (:mod:`.system`)."""

from .build import DEFAULT_ORACLE, AmmoniaConfig, build_ammonia  # noqa: F401
from .modes import NormalModes, inversion_path, normal_modes, optimise, wavenumber  # noqa: F401
from .system import Ammonia  # noqa: F401
