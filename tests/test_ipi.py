"""uqpot models served to i-PI through ASE's socket client (``uqpot.md.ipi``), on loopback: the real i-PI
(PyPI ``ipi``) runs a 2-bead path-integral NVT of a periodic quartz-like cell against the uqpot driver over a
unix socket, and the energies, forces and uncertainties it writes per bead equal uqpot's calculator on the
positions it wrote; ASE's own i-PI-protocol server (``SocketServer``, the i-PI side) on 127.0.0.1 gets from the
driver's command line the calculator's energy, forces, virial and uncertainty."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units
from ase.io import write
from conftest import silica_like

import uqpot
from uqpot.md.calculator import UQPotCalculator
from uqpot.md.ipi import main, serve
from uqpot.uq import build_method
from uqpot.uq.options import parse_uq

HP = dict(features=16, interactions=2, rbf=8, cutoff=4.0, readout_hidden=8)


@pytest.fixture(scope="module")
def ensemble_file(tmp_path_factory):
    torch.manual_seed(0)
    ens = build_method(parse_uq({"method": "ensemble", "members": 3}), {**HP, "members": 3, "seeds": [0, 1, 2]})
    ens.potential.known_elements[[8, 14]] = True
    ens.potential.atomref[14], ens.potential.atomref[8] = -2.0, -1.0  # an energy scale worth converting
    return uqpot.save(ens.double().eval(), tmp_path_factory.mktemp("ipi") / "ensemble.pt")


def _cell():
    at = silica_like(seed=3)
    at.set_cell(np.array([[4.9, 0.0, 0.0], [-2.2, 4.3, 0.0], [0.4, 0.3, 5.4]]), scale_atoms=True)
    return at


IPI_INPUT = """\
<simulation verbosity="low" floatformat="%.17e">
  <output prefix="sim">
    <properties stride="1" filename="out">[ step, potential, bead_potentials ]</properties>
    <properties stride="1" filename="beads">[ step, {per_atom} ]</properties>
    <trajectory filename="uq" stride="1" extra_type="uncertainty">extras</trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  <ffsocket name="uqpot" mode="unix" pbc="false">
    <latency>0.01</latency>
    <address>{address}</address>
  </ffsocket>
  <system>
    <initialize nbeads="2">
      <file mode="xyz" units="angstrom">init.xyz</file>
      <cell mode="manual" units="angstrom">[{cell}]</cell>
      <velocities mode="thermal" units="kelvin">300</velocities>
    </initialize>
    <forces><force forcefield="uqpot"/></forces>
    <ensemble><temperature units="kelvin">300</temperature></ensemble>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond">0.5</timestep>
        <thermostat mode="pile_l"><tau units="femtosecond">100</tau></thermostat>
      </dynamics>
    </motion>
  </system>
</simulation>
"""


def _extras(path):
    vals = []
    for line in Path(path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            vals.append(float(line.split()[0]))
    return vals


@pytest.mark.skipif(shutil.which("i-pi") is None and not (Path(sys.executable).parent / "i-pi").exists(),
                    reason="i-PI is not installed (pip install 'uqpot[ipi]')")
def test_ipi_path_integrals_run_the_uqpot_driver(ensemble_file, tmp_path):
    atoms = _cell()
    steps = 3
    write(tmp_path / "init.xyz", atoms, format="xyz")
    address = f"uqpot-{uuid.uuid4().hex[:8]}"
    cell = ", ".join(repr(float(v)) for v in atoms.cell.array.T.ravel())  # i-PI's manual cell: columns
    # positions and forces of every atom and bead in atomic units, at full precision (i-PI's xyz trajectories
    # print 6 digits)
    per_atom = ", ".join(f"atom_{q}(atom={i};bead={b})" for b in range(2) for i in range(len(atoms)) for q in "xf")
    (tmp_path / "input.xml").write_text(IPI_INPUT.format(steps=steps, address=address, cell=cell,
                                                         per_atom=per_atom))
    ipi = shutil.which("i-pi") or str(Path(sys.executable).parent / "i-pi")
    server = subprocess.Popen([sys.executable, ipi, "input.xml"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        sock = Path(f"/tmp/ipi_{address}")
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "i-PI did not open its socket"
            time.sleep(0.1)
        n = serve(ensemble_file, atoms, unixsocket=address, timeout=60)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
    log = server.stdout.read()
    assert n >= 2 * steps, log  # every bead of every step (and the start) came from the driver
    calc = UQPotCalculator(ensemble_file)  # eV, eV/Å
    out = np.loadtxt(tmp_path / "sim.out", ndmin=2)
    beads = np.loadtxt(tmp_path / "sim.beads", ndmin=2)[:, 1:].reshape(-1, 2, len(atoms), 2, 3)  # step b i x|f
    uqs = [_extras(tmp_path / f"sim.uq_{b}") for b in range(2)]
    assert len(out) == len(beads) == steps + 1
    worst_f, worst_e, worst_u = 0.0, 0.0, 0.0
    for b in range(2):
        assert len(uqs[b]) == steps + 1
        for k in range(steps + 1):
            at = atoms.copy()
            at.positions = beads[k, b, :, 0] * units.Bohr  # the driver's own conversion
            at.calc = calc
            e_ref, f_ref = at.get_potential_energy(), at.get_forces()
            f_ipi = beads[k, b, :, 1] * units.Ha / units.Bohr
            worst_f = max(worst_f, np.abs(f_ipi - f_ref).max() / np.abs(f_ref).max())
            worst_e = max(worst_e, abs(out[k, 2 + b] * units.Ha - e_ref) / abs(e_ref))
            worst_u = max(worst_u, abs(uqs[b][k] - calc.results["uncertainty"]) / calc.results["uncertainty"])
        assert np.abs(beads[-1, b, :, 0] - beads[0, b, :, 0]).max() > 1e-4  # the beads moved
    assert np.abs(beads[-1, 0, :, 0] - beads[-1, 1, :, 0]).max() > 1e-6  # two different beads
    print(f"i-PI vs uqpot calculator, max relative difference: forces {worst_f:.1e}, energies {worst_e:.1e}, "
          f"U {worst_u:.1e}")
    assert worst_f < 1e-6 and worst_e < 1e-6 and worst_u < 1e-6, (worst_f, worst_e, worst_u)
    # i-PI's potential is the mean over the beads
    np.testing.assert_allclose(out[:, 1], out[:, 2:4].mean(1), rtol=1e-12)


def _free_port():
    with socket.socket(socket.AF_INET) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ase_socket_server_gets_the_calculator_through_the_driver_command(ensemble_file, tmp_path):
    from ase.calculators.socketio import SocketServer

    atoms = _cell()
    write(tmp_path / "atoms.extxyz", atoms)
    port = _free_port()
    result = {}

    def driver():  # the driver's command line, in a thread (a subprocess would import torch again)
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            result["rc"] = main(["--model", str(ensemble_file), "--structure", str(tmp_path / "atoms.extxyz"),
                                 "--host", "127.0.0.1", "--port", str(port)])
        result["stderr"] = err.getvalue()

    with SocketServer(port=port, timeout=60) as server:
        thread = threading.Thread(target=driver, daemon=True)
        thread.start()
        calc = UQPotCalculator(ensemble_file)
        for k in range(3):
            at = atoms.copy()
            at.rattle(0.05, seed=k)
            at.set_cell(at.cell * (1 + 0.01 * k), scale_atoms=True)
            got = server.calculate(at)
            at.calc = calc
            e, f, s = at.get_potential_energy(), at.get_forces(), at.get_stress(voigt=False)
            assert got["energy"] == pytest.approx(e, rel=1e-12)
            assert np.abs(got["forces"] - f).max() <= 1e-12 * np.abs(f).max()
            np.testing.assert_allclose(got["virial"], -at.get_volume() * s, rtol=1e-10,
                                       atol=1e-12 * np.abs(s).max() * at.get_volume())
            extra = json.loads(bytes(got["morebytes"]).decode())
            assert extra["uncertainty"] == pytest.approx(calc.results["uncertainty"], rel=1e-12)
            assert extra["uncertainty_max_atom"] == pytest.approx(calc.results["uncertainty_atom"].max(), rel=1e-12)
        server.protocol.end()
        thread.join(timeout=60)
    assert result["rc"] == 0 and "3 force evaluations" in result["stderr"]
