"""An ASE calculator that kills the process it runs in for one marked structure (its first atom beyond
x = 100 Å), and otherwise is ASE's Lennard-Jones: a worker that dies in the middle of labelling."""

import os
import signal

from ase.calculators.lj import LennardJones


class KillerLJ(LennardJones):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        a = atoms if atoms is not None else self.atoms
        if a.positions[0, 0] > 100.0:
            os.kill(os.getpid(), signal.SIGKILL)
        super().calculate(atoms, properties, system_changes or ["positions", "numbers", "cell", "pbc"])
