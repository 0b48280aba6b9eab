"""uqpot.nn: the backbones (interatomic potentials) and their registry (:mod:`uqpot.nn.backbone`).

Importing the package registers the built-in backbones (PaiNN, MACE, SevenNet, and the committee of different backbones; their optional dependencies are imported
only when such a network is built); a backbone defined elsewhere registers itself when its module is imported
(``@register_backbone``).
"""

from . import potential as _potential  # noqa: F401  (registers PaiNN first: the default)
from . import mace as _mace  # noqa: F401  (registers the backbone)
from . import sevennet as _sevennet  # noqa: F401  (registers the backbone)
from . import committee as _committee  # noqa: F401  (registers the assembled committee of backbones)
