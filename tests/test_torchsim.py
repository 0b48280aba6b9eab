"""uqpot models in torch-sim: a few NVE steps through torch-sim's velocity Verlet equal uqpot's engine on
the same start and velocities (float64), the units are metal units, and a UQ method's U is there every
step."""

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase import units as ase_units  # noqa: E402

from uqpot.core import fields as F  # noqa: E402
from uqpot.data.batch import collate  # noqa: E402
from uqpot.data.structures import Structure  # noqa: E402
from uqpot.md.batched import BatchedMD  # noqa: E402
from uqpot.md.neb import nh3_pyramid  # noqa: E402
from uqpot.md.torchsim import TorchSimModel  # noqa: E402
from uqpot.uq import build_method  # noqa: E402
from uqpot.uq.options import parse_uq  # noqa: E402
from uqpot.core.units import EV_TO_KCAL_PER_MOL  # noqa: E402


def _starts():
    out = []
    for k in range(3):
        a = nh3_pyramid()
        a.rattle(0.05, seed=k)
        out.append(a)
    return out


def _ensemble():
    torch.manual_seed(0)
    hp = dict(features=16, interactions=2, rbf=8, readout_hidden=8, cutoff=5.0)
    m = build_method(parse_uq({"method": "ensemble", "members": 2}), {**hp, "members": 2, "seeds": [0, 1]})
    m.potential.known_elements[[1, 7]] = True
    return m.double().eval()


def test_torchsim_nve_equals_uqpot_engine_and_reports_uncertainty():
    model = _ensemble()
    tsm = TorchSimModel(model)
    atoms = _starts()
    state = ts.initialize_state(atoms, device=torch.device("cpu"), dtype=torch.float64)
    out = tsm(state)
    ref = model(collate([Structure.from_atoms(a) for a in atoms], cutoff=5.0, dtype="float64"))
    assert torch.allclose(out["energy"] * EV_TO_KCAL_PER_MOL, ref[F.ENERGY].double(), rtol=1e-12)
    assert torch.allclose(out["forces"] * EV_TO_KCAL_PER_MOL, ref[F.FORCES].double(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(out["uncertainty"], ref[F.UNCERTAINTY].double(), rtol=1e-12)

    dt_fs, steps = 0.5, 20
    kT = torch.tensor(300.0 * float(ts.units.MetalUnits.temperature), dtype=torch.float64)
    init, update = ts.integrators.nve(model=tsm, dt=torch.tensor(dt_fs * ase_units.fs, dtype=torch.float64), kT=kT,
                                      seed=3)
    st = init(state)
    v0 = (st.momenta / st.masses.unsqueeze(-1)).numpy() / (1.0 / ase_units.fs)  # Å per ASE time -> Å/fs
    n = [len(a) for a in atoms]
    vel = np.split(v0, np.cumsum(n)[:-1])
    us = []
    for _ in range(steps):
        st = update(st)
        us.append(tsm.last_uncertainty.clone())
    md = BatchedMD(model, atoms, timestep_fs=dt_fs, thermostat="nve", velocities=vel, check_every=5, record_every=5)
    res = md.run(steps)
    x_uqpot = np.concatenate([r.final_positions for r in res.replicas])
    assert np.abs(st.positions.numpy() - x_uqpot).max() < 1e-9
    assert np.allclose(us[-1].numpy(), [r.uncertainty[-1] for r in res.replicas], rtol=1e-8)
    assert len(us) == steps and all(u.shape == (3,) for u in us)
