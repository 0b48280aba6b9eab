"""uqpot.data: structures, batches, neighbour lists, file reading and validation, splits, the label store and
the paper's data sets.

Importing the package registers the file readers of the data-set modules with :mod:`uqpot.data.io`
(rMD17 ``.npz``, NFF ``.pth.tar``), so that :func:`uqpot.data.io.read_structures` reads them.
"""

from .sets import nff as _nff  # noqa: F401  (registers its reader)
from .sets import rmd17 as _rmd17  # noqa: F401  (registers its reader)
