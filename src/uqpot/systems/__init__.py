"""Systems: what uqpot knows about each studied system, one registry entry each (:mod:`.base`).

A system declares its data build (with an oracle and an executor), MD campaign, stability criteria, attack
rate and preset files; the loop, the studies and the command line look them up by name (:func:`get_system`), and the
lower layers take the values as arguments.  Importing this package registers the paper's three systems;
a system defined elsewhere registers itself when its module is imported (``@register_system``).
"""

from .base import (GENERIC, SYSTEMS, GridSystemName, LoopSystemName, System, check_loop_system,  # noqa: F401
                   find_system, StudySystemName, get_system, preset_path, register_system, system_names)
from .ammonia import Ammonia  # noqa: F401
from .rmd17 import RMD17  # noqa: F401
from .silica import Silica  # noqa: F401
