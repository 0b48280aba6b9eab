"""Model files: state_dict + hyper-parameters + version; identical model after a round trip; clear errors
for truncated files, files from a newer uqpot and weights that do not fit the architecture."""

import pickle

import pytest
import torch

import uqpot
from uqpot.nn import modelfile
from uqpot.data.batch import collate
from uqpot.core.errors import ModelFileError
from uqpot.nn.potential import Potential


@pytest.fixture(scope="module")
def small_model(ethanol):
    torch.manual_seed(3)
    m = Potential(features=16, interactions=2, rbf=8, readout_hidden=8)
    m.fit_reference(ethanol[:20])
    return m.eval()


def test_round_trip_identical(tmp_path, small_model, ethanol):
    path = uqpot.save(small_model, tmp_path / "m.pt")
    loaded = uqpot.load(path)
    assert isinstance(loaded, Potential) and loaded.hparams == small_model.hparams
    for k, v in small_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    b = collate([ethanol[i] for i in range(4)], cutoff=5.0)
    a, c = small_model(b, create_graph=False), loaded(b, create_graph=False)
    assert torch.equal(a["energy"], c["energy"]) and torch.equal(a["forces"], c["forces"])
    assert loaded.elements() == [1, 6, 8]


def test_float64_model_round_trip(tmp_path, small_model):
    m64 = Potential(**small_model.hparams)
    m64.load_state_dict(small_model.state_dict())
    m64.double()
    loaded = uqpot.load(uqpot.save(m64, tmp_path / "m64.pt"))
    assert loaded.dtype == torch.float64 and loaded.atomref.dtype == torch.float64


def test_file_holds_no_pickled_objects(tmp_path, small_model):
    path = uqpot.save(small_model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)  # would raise on any pickled class
    assert payload["format"] == "uqpot-model" and payload["uqpot_version"] == uqpot.__version__
    assert set(payload) >= {"kind", "hparams", "state_dict"}


def test_truncated_file(tmp_path, small_model):
    path = uqpot.save(small_model, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"cut\.pt: not a readable uqpot model file"):
        uqpot.load(tmp_path / "cut.pt")


def test_newer_version(tmp_path, small_model):
    path = uqpot.save(small_model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["uqpot_version"] = "99.0.0"
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(ModelFileError, match=r"new\.pt: written by a newer uqpot \(99\.0\.0\)"):
        uqpot.load(tmp_path / "new.pt")


def test_wrong_architecture(tmp_path, small_model):
    path = uqpot.save(small_model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["hparams"]["features"] = 32
    torch.save(payload, tmp_path / "arch.pt")
    with pytest.raises(ModelFileError, match=r"arch\.pt: weights do not match the architecture"):
        uqpot.load(tmp_path / "arch.pt")


def test_not_a_model_and_malicious_pickle(tmp_path):
    torch.save({"hello": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not a uqpot model file"):
        uqpot.load(tmp_path / "other.pt")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "uqpot-model", "x": Evil()}))
    with pytest.raises(ModelFileError):
        uqpot.load(tmp_path / "evil.pt")
    assert not marker.exists()  # the payload never ran


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found"):
        modelfile.load(tmp_path / "none.pt")
