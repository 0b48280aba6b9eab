"""The starting cell of the silica build: α-quartz cut to ``atoms`` atoms (see :mod:`.build`, step 1)."""

from __future__ import annotations

import numpy as np

from ...data.sets._common import BuildError

def quartz_orthorhombic():
    """α-quartz in its orthohexagonal cell (a, √3·a, c; 18 atoms)."""
    from ase.build import make_supercell
    from ase.spacegroup import crystal

    quartz = crystal(["Si", "O"], basis=[(0.4697, 0.0, 2.0 / 3.0), (0.4135, 0.2669, 0.1191 - 1.0 / 3.0)],
                     spacegroup=154, cellpar=[4.916, 4.916, 5.405, 90, 90, 120])
    ortho = make_supercell(quartz, [[1, 0, 0], [1, 2, 0], [0, 0, 1]])
    ortho.set_cell(np.diag(np.diag(ortho.cell.array)), scale_atoms=False)
    ortho.wrap()
    return ortho


def _repeats(n_atoms: int, lengths) -> tuple[int, int, int]:
    best = None
    for n1 in range(1, 13):
        for n2 in range(1, 13):
            for n3 in range(1, 13):
                cells = n1 * n2 * n3
                if 18 * cells < n_atoms:
                    continue
                dims = np.array([n1, n2, n3]) * lengths
                key = (cells, dims.max() / dims.min())
                if dims.max() / dims.min() <= 1.8 and (best is None or key < best[0]):
                    best = (key, (n1, n2, n3))
    if best is None:
        raise BuildError(f"no quartz supercell for {n_atoms} atoms")
    return best[1]


def silica_cell(n_atoms: int = 192, seed: int = 0):
    """An orthorhombic SiO2 cell of ``n_atoms`` atoms cut from α-quartz (see the module docstring)."""
    from ase.neighborlist import neighbor_list

    if n_atoms % 3 or n_atoms < 6:
        raise BuildError(f"a SiO2 cell needs a multiple of 3 atoms (at least 6), got {n_atoms}")
    unit = quartz_orthorhombic()
    rep = _repeats(n_atoms, np.diag(unit.cell.array))
    atoms = unit.repeat(rep)
    rng = np.random.default_rng([seed, 7])
    remove: set[int] = set()
    i, j, d = neighbor_list("ijd", atoms, 2.2)
    oxygens: dict[int, list] = {}
    for ii, jj, dd in zip(i, j, d):
        if atoms.numbers[ii] == 14 and atoms.numbers[jj] == 8:
            oxygens.setdefault(int(ii), []).append((float(dd), int(jj)))
    while len(atoms) - len(remove) > n_atoms:
        si = [k for k in np.flatnonzero(atoms.numbers == 14) if k not in remove]
        s = int(rng.choice(si))
        partners = sorted((dd, jj) for dd, jj in oxygens.get(s, []) if jj not in remove)
        if len(partners) < 2:
            raise BuildError("cannot remove an SiO2 unit (an Si without two O neighbours)")
        remove.update([s, int(partners[0][1]), int(partners[1][1])])
    keep = [k for k in range(len(atoms)) if k not in remove]
    out = atoms[keep]
    order = np.argsort(-out.numbers, kind="stable")  # Si first, then O
    return out[order]
