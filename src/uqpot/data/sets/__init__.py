"""The paper's three data sets, fetched or built reproducibly, and a reader for the published NFF files.

* :mod:`~uqpot.data.sets.rmd17` — revised MD17 (Christensen & von Lilienfeld 2020; paper section 2.2):
  :func:`fetch_rmd17` downloads and verifies the figshare archive, :func:`load_rmd17` returns the official
  train/validation/test splits (800/200/1000 per split, as in the paper's SI section I).
* :mod:`~uqpot.data.sets.ammonia` — NH3 built like the paper's set (section 2.2): a DFT minimum, normal
  modes from its Hessian, 78 training geometries 0-5 kcal/mol above the minimum and an out-of-domain test
  set of 200 geometries, 2 per 1 kcal/mol bin from 0 to 100 kcal/mol (:func:`build_ammonia`).
* :mod:`~uqpot.data.sets.silica` — amorphous SiO2 from a melt-quench and the MD conditions of SI Table S1
  on a configurable cell, labelled by the BKS oracle; a high-energy, high-force test set (SI section II.A)
  (:func:`build_silica`).
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
    if name in ("fetch_rmd17", "load_rmd17", "rmd17_split_indices", "convert_rmd17", "RMD17_MOLECULES",
                "RMD17_URL", "RMD17_SHA256"):
        from . import rmd17

        return getattr(rmd17, name)
    if name in ("build_ammonia", "AmmoniaConfig"):
        from . import ammonia

        return getattr(ammonia, name)
    if name in ("build_silica", "SilicaConfig", "silica_cell"):
        from . import silica

        return getattr(silica, name)
    if name in ("read_nff", "load_nff"):
        from . import nff

        return getattr(nff, name)
    raise AttributeError(name)


__all__ = ["FetchError", "BuildError", "energy_histogram", "format_histogram", "fetch_rmd17", "load_rmd17",
           "rmd17_split_indices", "convert_rmd17", "build_ammonia", "AmmoniaConfig", "build_silica",
           "SilicaConfig", "silica_cell", "read_nff", "load_nff"]
