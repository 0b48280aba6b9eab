"""uqpot models as i-PI force fields, through ASE's socket client (the i-PI protocol).

i-PI (PyPI ``ipi``; path-integral MD, replica exchange, metadynamics, ...) is a server: it owns the nuclei and
sends positions and the cell to force "drivers" over a unix or TCP socket, which answer with the energy,
forces and virial.  :func:`serve` makes uqpot's :class:`~uqpot.md.calculator.UQPotCalculator` such a driver
with ASE's :class:`ase.calculators.socketio.SocketClient`: it connects to i-PI's ``<ffsocket>`` and answers
every request until i-PI says EXIT (one request per bead and step).

**Protocol and units.**  i-PI sends positions and the cell in Bohr; ASE's client converts them to Å (its
CODATA-2014 Bohr), the calculator gives eV and eV/Å (uqpot's kcal/mol converted by :mod:`uqpot.core.units`), and the
client sends the energy in Hartree, the forces in Hartree/Bohr and the virial W = −V·σ in Hartree (σ = uqpot's
stress, ASE's sign), all converted with ASE's constants.  i-PI sends no element symbols: the driver's
``atoms`` (a structure file with the same atoms in the same order as i-PI's ``<initialize>`` file) give the
species and the periodicity (i-PI always sends a cell; for a molecule, give non-periodic ``atoms``).  The
virial is sent where the atoms are periodic in all three directions and the model gives a stress (a plain
potential, the ensemble, LLPR; i-PI's NPT and the pressure estimators need it); otherwise it is zero.

**Uncertainty.**  Every answer carries the i-PI protocol's optional "extra" string, as JSON:
``{"uncertainty": U, "uncertainty_max_atom": max_i U_i}`` (U in the method's own unit, as uqpot reports it;
a plain potential sends ``{}``).  i-PI parses JSON extras and can write them per bead, e.g.
``<trajectory filename="uq" stride="1" extra_type="uncertainty"> extras </trajectory>``.

Command line: ``python -m uqpot.md.ipi --model MODEL.pt --structure init.xyz --unix NAME`` (i-PI's
``<ffsocket mode="unix"><address>NAME</address>``; the socket file is ``/tmp/ipi_NAME``) or ``--host 127.0.0.1
--port 31415`` (``mode="inet"``).
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
from ase.calculators.socketio import SocketClient

from ..core import fields as F
from .calculator import UQPotCalculator


class UQPotSocketClient(SocketClient):
    """ASE's i-PI socket client that also sends the uncertainty as the answer's JSON "extra" string."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._extra = b"{}"
        self.evaluations = 0
        if self.comm.rank == 0:  # only rank 0 holds the socket; ASE's sendforce takes the extra bytes
            send = self.protocol.sendforce

            def sendforce(energy, forces, virial, morebytes=None):
                send(energy, forces, virial, morebytes=np.frombuffer(self._extra, dtype=np.byte))

            self.protocol.sendforce = sendforce

    def calculate(self, atoms, use_stress):
        energy, forces, virial = super().calculate(atoms, use_stress)
        self.evaluations += 1
        res = atoms.calc.results
        extra = {}
        if F.UNCERTAINTY in res:
            extra = {"uncertainty": float(res[F.UNCERTAINTY]),
                     "uncertainty_max_atom": float(np.max(res[F.UNCERTAINTY_ATOM]))}
        self._extra = json.dumps(extra).encode()
        return energy, forces, virial


def serve(model, atoms, *, unixsocket: str | None = None, host: str = "localhost", port: int | None = None,
          use_stress: bool | None = None, timeout: float | None = None, log=None, device=None) -> int:
    """Answers i-PI's force requests with ``model`` (a uqpot model file or model) until i-PI sends EXIT.

    ``atoms``: the species (and periodicity) of i-PI's atoms, in i-PI's order (an ``ase.Atoms`` or a structure
    file); ``unixsocket``: i-PI's unix socket address (else ``host``/``port``, i-PI's default port 31415);
    ``use_stress``: send the virial (None: where ``atoms`` are periodic in all three directions and the model
    gives a stress).  Returns the number of force evaluations made."""
    from ..evaluation.evaluate import gives_stress

    if isinstance(atoms, (str, bytes)) or hasattr(atoms, "__fspath__"):
        from ase.io import read

        atoms = read(atoms)
    atoms = atoms.copy()
    calc = UQPotCalculator(model, device=device)  # eV, Å: ASE's client converts to atomic units
    atoms.calc = calc
    periodic = bool(np.all(atoms.pbc))
    if use_stress is None:
        use_stress = periodic and gives_stress(calc.model)
        if periodic and not use_stress:
            warnings.warn(f"{getattr(calc.model, 'method', 'the model')} gives no stress: i-PI gets a zero virial "
                          "(its pressure and NPT would be wrong)", stacklevel=2)
    client = UQPotSocketClient(host=host, port=port, unixsocket=unixsocket, timeout=timeout, log=log)
    client.run(atoms, use_stress=bool(use_stress))
    return client.evaluations


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m uqpot.md.ipi",
                                description="Serve a uqpot model to i-PI (or any i-PI-protocol server).")
    p.add_argument("--model", required=True, help="uqpot model file")
    p.add_argument("--structure", required=True,
                   help="the atoms in i-PI's order (any file ase.io reads; its pbc says whether to send a virial)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", help="i-PI's unix socket address (socket file /tmp/ipi_ADDRESS)")
    where.add_argument("--port", type=int, help="i-PI's TCP port (with --host)")
    p.add_argument("--host", default="localhost")
    p.add_argument("--no-stress", action="store_true", help="send a zero virial")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    n = serve(a.model, a.structure, unixsocket=a.unix, host=a.host, port=a.port,
              use_stress=False if a.no_stress else None, device=a.device)
    print(f"uqpot i-PI driver: {n} force evaluations, server closed the connection", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["serve", "UQPotSocketClient"]
