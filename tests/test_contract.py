"""The contract of a UQ method (tests/support/contract.py), run for every registered method.

Adding a method is one file (its class, options and output fields) plus one small factory here: how to
build a fitted, small instance of it.  A registered method without a factory fails
``test_every_registered_method_has_a_factory``.
"""

import pytest

from support import contract as C
from uqpot.uq import METHODS


def _options(name):
    return {"ensemble": {"members": 3}, "gmm": {"candidates": [1, 2]}, "shallow_ensemble": {"heads": 3},
            "partial_ensemble": {"members": 3, "shared": 1}}.get(name, {})


#: method -> factory(train, val, reduction) of a small fitted instance (float64, eval)
FACTORIES = {name: (lambda train, val, reduction="mean", name=name:
                    C.generic_factory(name, train, val, reduction=reduction, **_options(name)))
             for name in ("ensemble", "mve", "evidential", "gmm", "llpr", "shallow_ensemble", "partial_ensemble",
                                                                   "descriptor_distance")}
FACTORIES["llpr_atomic"] = lambda train, val, reduction="mean": C.generic_factory(
    "llpr", train, val, reduction=reduction, output="atomic_energy")
BUILTIN = sorted(METHODS)  # the methods registered when this module is imported


@pytest.fixture(scope="module")
def sets(ethanol):
    return ethanol[:16], ethanol[16:24], [ethanol[i] for i in (30, 31, 32)]


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def model(request, sets):
    train, val, _ = sets
    return request.param, FACTORIES[request.param](train, val)


def test_every_registered_method_has_a_factory():
    assert set(BUILTIN) <= set(FACTORIES), f"add a factory for {sorted(set(BUILTIN) - set(FACTORIES))}"


def test_output_fields_are_registered(model, sets):
    C.check_fields(model[1], sets[2])


def test_save_load_round_trip(model, sets, tmp_path):
    C.check_round_trip(model[1], sets[2], tmp_path)


def test_forces_and_uncertainty_gradients_match_finite_differences(model, sets):
    C.check_derivatives(model[1], sets[2][0])


def test_dense_layout_equals_edge_list(model, sets):
    C.check_dense_equals_sparse(model[1], sets[2])


def test_reductions(model, sets):
    train, val, test = sets
    C.check_reductions(lambda r: FACTORIES[model[0]](train, val, r), test)


def test_calibration_fit(model, sets):
    C.check_calibration(model[1], sets[1])


@pytest.mark.slow
def test_compiled_md_equals_eager(model, ammonia):
    from uqpot.data.structures import StructureDataset

    ds = StructureDataset(list(ammonia)[:8])
    name = model[0]
    m = FACTORIES[name](ds, ds)
    C.check_compiled_md(m, [ds[k] for k in range(2)])
