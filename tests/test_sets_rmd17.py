"""rMD17 fetch/verify/extract/load against a small archive of the real layout, served by http.server on
127.0.0.1 (no internet): the archive is built here from the shared rMD17 ethanol frames."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from uqpot.data.sets import FetchError
from uqpot.data.sets.rmd17 import load_rmd17, rmd17_split_indices
from uqpot.data.sets.rmd17_fetch import fetch_rmd17
from uqpot.core.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ETHANOL = SHARED_DATA / "rmd17_ethanol_800.extxyz"
N_TRAIN, N_TEST = 300, 400  # per split, out of the 800 frames (the real splits are 1000 + 1000)


def _ethanol_arrays():
    if not ETHANOL.is_file():
        pytest.skip(f"reference data {ETHANOL.name} not found in {ETHANOL.parent}")
    import ase.io

    frames = ase.io.read(str(ETHANOL), ":")
    return {
        "nuclear_charges": np.asarray(frames[0].numbers, dtype=np.int32),
        "coords": np.stack([a.positions for a in frames]),
        "energies": np.array([a.get_potential_energy() for a in frames]),
        "forces": np.stack([a.get_forces() for a in frames]),
        "old_indices": np.arange(len(frames)),
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_archive(path: Path, arrays: dict, skip: tuple = (), extra: dict | None = None) -> Path:
    """An rmd17.tar.bz2 with the official layout (rmd17/npz_data, rmd17/splits), ethanol only."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    n = len(arrays["energies"])
    with tarfile.open(path, "w:bz2") as tar:
        _add(tar, "rmd17/readme.txt", b"test archive in the rMD17 layout\n")
        _add(tar, "rmd17/npz_data/rmd17_ethanol.npz", buf.getvalue())
        for k in range(1, 6):
            perm = np.random.default_rng(k).permutation(n)
            for kind, idx in (("train", perm[:N_TRAIN]), ("test", perm[N_TRAIN:N_TRAIN + N_TEST])):
                name = f"rmd17/splits/index_{kind}_{k:02d}.csv"
                if name not in skip:
                    _add(tar, name, "".join(f"{i}\n" for i in idx).encode())
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return path


@pytest.fixture(scope="module")
def arrays():
    return _ethanol_arrays()


@pytest.fixture(scope="module")
def served(tmp_path_factory, arrays):
    """(base URL, folder) of a real http.server on 127.0.0.1 serving the good and the bad archives."""
    root = tmp_path_factory.mktemp("www")
    build_archive(root / "rmd17.tar.bz2", arrays)
    build_archive(root / "nosplit.tar.bz2", arrays, skip=("rmd17/splits/index_test_03.csv",))
    good = (root / "rmd17.tar.bz2").read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2: len(bad) // 2 + 64] = bytes(64)  # a damaged block in the middle of the bz2 stream
    (root / "corrupt.tar.bz2").write_bytes(bytes(bad))
    (root / "notatar.tar.bz2").write_bytes(b"<html>an error page, not an archive</html>")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_fetch_from_local_server_verifies_extracts_and_splits(served, tmp_path, arrays):
    base, www = served
    res = fetch_rmd17(tmp_path, url=f"{base}/rmd17.tar.bz2", sha256=_sha(www / "rmd17.tar.bz2"),
                      molecules=["ethanol"], splits=[2], progress=False)
    assert res.downloaded and res.extracted and res.molecules == ["ethanol"]
    assert (tmp_path / "rmd17.tar.bz2").is_file() and not (tmp_path / "rmd17.tar.bz2.part").exists()
    assert sorted(p.name for p in (tmp_path / "rmd17" / "splits").iterdir()) == sorted(
        f"index_{k}_{i:02d}.csv" for i in range(1, 6) for k in ("train", "test"))
    assert not (tmp_path / "rmd17" / "readme.txt").exists()  # only the expected members are extracted

    train, val, test = load_rmd17(tmp_path, "ethanol", split=2)
    assert (len(train), len(val), len(test)) == (240, 60, N_TEST)  # 80/20 of the training split
    idx = rmd17_split_indices(tmp_path, "ethanol", split=2)
    assert not set(idx["train"]) & set(idx["val"]) and not set(idx["val"]) & set(idx["test"])
    perm = np.random.default_rng(2).permutation(len(arrays["energies"]))
    assert sorted(np.concatenate([idx["train"], idx["val"]])) == sorted(perm[:N_TRAIN])
    s = test[5]
    i = s.info["rmd17_index"]
    assert s.energy == arrays["energies"][i] and np.array_equal(s.forces, arrays["forces"][i])
    assert np.array_equal(s.positions, arrays["coords"][i]) and list(s.numbers) == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert not s.periodic
    # the same seed gives the same validation frames; another seed others
    assert np.array_equal(rmd17_split_indices(tmp_path, "ethanol", 2)["val"], idx["val"])
    assert not np.array_equal(rmd17_split_indices(tmp_path, "ethanol", 2, seed=1)["val"], idx["val"])

    # the converted split reads back through the standard reader
    from uqpot.data.io import read_structures

    out = tmp_path / "rmd17" / "uqpot" / "ethanol" / "split2"
    back = read_structures(out / "data.extxyz")
    assert len(back) == 240 + 60 + N_TEST
    assert back[0].energy == pytest.approx(train[0].energy, abs=1e-6)
    assert len((out / "test.idx").read_text().split()) == N_TEST

    # a second fetch finds the data and downloads nothing
    again = fetch_rmd17(tmp_path, url="http://127.0.0.1:9/never-contacted", progress=False)
    assert not again.downloaded and not again.extracted


def test_local_archive_without_network(served, tmp_path):
    _, www = served
    res = fetch_rmd17(tmp_path, url=f"http://127.0.0.1:{_closed_port()}/x", archive=www / "rmd17.tar.bz2",
                      sha256=None, progress=False)
    assert res.extracted and not res.downloaded
    assert len(load_rmd17(tmp_path / "rmd17", "ethanol", split=5)[2]) == N_TEST


def test_no_network_says_where_to_put_the_archive(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/rmd17.tar.bz2"
    with pytest.raises(FetchError) as e:
        fetch_rmd17(tmp_path, url=url, progress=False, timeout=5)
    msg = str(e.value)
    assert url in msg and "--archive" in msg and "no network" in msg and "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_no_network_cli_prints_one_line_and_exits_2(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/rmd17.tar.bz2"
    r = subprocess.run([sys.executable, "-m", "uqpot.cli.main", "data", "fetch", "rmd17", "--dest", str(tmp_path),
                        "--url", url, "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--archive" in lines[0]


@pytest.mark.parametrize("name", ["corrupt.tar.bz2", "notatar.tar.bz2"])
def test_corrupt_download_is_refused_and_leaves_nothing(served, tmp_path, name):
    base, _ = served
    with pytest.raises(DataError) as e:
        fetch_rmd17(tmp_path, url=f"{base}/{name}", sha256=None, progress=False)
    assert "not a readable tar.bz2 archive" in str(e.value) and name not in ("",)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no .part, no rmd17/, no temporary folder


def test_checksum_mismatch_is_refused(served, tmp_path):
    base, _ = served
    with pytest.raises(DataError) as e:
        fetch_rmd17(tmp_path, url=f"{base}/rmd17.tar.bz2", sha256="0123456789ab", progress=False)
    assert "SHA-256" in str(e.value) and "--sha256 none" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_split_file_is_refused_naming_it(served, tmp_path):
    base, _ = served
    with pytest.raises(DataError) as e:
        fetch_rmd17(tmp_path, url=f"{base}/nosplit.tar.bz2", sha256=None, progress=False)
    assert "splits/index_test_03.csv" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_loader_names_a_missing_split_file(served, tmp_path):
    _, www = served
    fetch_rmd17(tmp_path, archive=www / "rmd17.tar.bz2", sha256=None, progress=False)
    (tmp_path / "rmd17" / "splits" / "index_train_04.csv").unlink()
    with pytest.raises(DataError) as e:
        load_rmd17(tmp_path, "ethanol", split=4)
    assert e.value.path.endswith("index_train_04.csv") and "not found" in str(e.value)
    with pytest.raises(DataError) as e:
        load_rmd17(tmp_path, "aspirin", split=1)
    assert "rmd17_aspirin.npz" in str(e.value) and "ethanol" in str(e.value)


def test_fetch_cli_from_local_server(served, tmp_path):
    base, www = served
    from click.testing import CliRunner

    from uqpot.cli.main import cli

    r = CliRunner().invoke(cli, ["data", "fetch", "rmd17", "--dest", str(tmp_path), "--url", f"{base}/rmd17.tar.bz2",
                                 "--sha256", _sha(www / "rmd17.tar.bz2")[:16], "--molecule", "ethanol",
                                 "--split", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "ethanol" in r.stdout and (tmp_path / "rmd17" / "uqpot" / "ethanol" / "split1" / "data.extxyz").is_file()


class _FlakyRangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``data``: the first plain request breaks off half-way; range requests are answered (206)."""

    data = b""
    requests: list = []

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            body = self.data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.data)))
        self.end_headers()
        self.wfile.write(self.data[: len(self.data) // 2])  # then the connection drops
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_broken_download_is_resumed_with_a_range_request(served, tmp_path):
    _, www = served
    _FlakyRangeHandler.data = (www / "rmd17.tar.bz2").read_bytes()
    _FlakyRangeHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyRangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/rmd17.tar.bz2"
    try:
        with pytest.raises(FetchError, match="run the command again to resume"):
            fetch_rmd17(tmp_path, url=url, sha256=_sha(www / "rmd17.tar.bz2"), progress=False)
        part = tmp_path / "rmd17.tar.bz2.part"
        assert part.stat().st_size == len(_FlakyRangeHandler.data) // 2 and not (tmp_path / "rmd17").exists()
        res = fetch_rmd17(tmp_path, url=url, sha256=_sha(www / "rmd17.tar.bz2"), progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert res.extracted and not part.exists()
    assert _FlakyRangeHandler.requests == [None, f"bytes={len(_FlakyRangeHandler.data) // 2}-"]
    assert (tmp_path / "rmd17.tar.bz2").read_bytes() == _FlakyRangeHandler.data
