"""The data-set readers (rMD17, the published NFF files) and the helpers the data-set builds share.

* :mod:`~uqpot.data.sets.rmd17` — revised MD17 (Christensen & von Lilienfeld 2020; paper section 2.2):
  :func:`load_rmd17` returns the official train/validation/test splits (800/200/1000 per split, as in the paper's SI section I).
* :mod:`~uqpot.data.sets.rmd17_fetch` — :func:`fetch_rmd17` downloads, verifies and extracts the figshare
  archive.
* :mod:`~uqpot.data.sets._build` — what the data-set builds share (progress, labelling through the store,
  slot sampling), given an oracle by the build: this package never imports :mod:`uqpot.oracle`.  The builds
  themselves (ammonia, silica) belong to their systems (:mod:`uqpot.systems`).
* :mod:`~uqpot.data.sets.nff` — the legacy NFF ``.pth.tar`` files of the published archives, read by an
  allow-list unpickler that never executes code (:func:`read_nff`).

Every label goes through the :class:`~uqpot.data.store.Store`: building a set a second time makes no
oracle call, and a build killed at any moment loses no finished label and recomputes none.
Units: energies kcal/mol, forces kcal/mol/Å, lengths Å, MD times fs (LAMMPS's ps are converted where
they are used).
"""

from __future__ import annotations

from ._common import BuildError, FetchError, energy_histogram, format_histogram  # noqa: F401


def __getattr__(name):  # lazy: importing the package does not import PySCF, LAMMPS or torch
    if name == "fetch_rmd17":
        from . import rmd17_fetch

        return rmd17_fetch.fetch_rmd17
    if name in ("load_rmd17", "rmd17_split_indices", "convert_rmd17", "RMD17_MOLECULES",
                "RMD17_URL", "RMD17_SHA256"):
        from . import rmd17

        return getattr(rmd17, name)
    if name in ("read_nff", "load_nff"):
        from . import nff

        return getattr(nff, name)
    raise AttributeError(name)


__all__ = ["FetchError", "BuildError", "energy_histogram", "format_histogram", "fetch_rmd17", "load_rmd17",
           "rmd17_split_indices", "convert_rmd17", "read_nff", "load_nff"]
