"""Bad training configs and options (issue kinds 4, 5, 6, 7, 8, 14, 15): conflicting or duplicated entries,
non-finite and boolean numbers, unusable devices and output directories, values that cannot make a model.
Every case: exit 2, one line naming the file (or the option) and the key, nothing written."""

from __future__ import annotations

import json
import os

import pytest
from support.badinput import assert_user_error, cli, results, tiny_config, write_water


@pytest.fixture
def data(tmp_path):
    return write_water(tmp_path / "data.extxyz")


def _yaml(tmp_path, data, text: str):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"out: {tmp_path / 'run'}\ndata:\n  path: {data}\nmodel: {{features: 8, interactions: 1, rbf: 4, "
                   f"readout_hidden: 4}}\n" + text)
    return cfg


# (name, YAML added to a good config, message)
CASES = [
    # kind 4: conflicting or duplicated entries
    ("index files and split sizes", "split: {{train_file: {idx}, train: 0.5, test: 0.3}}\n",
     "split.train_file and split.train cannot be used together"),
    ("val_file and val", "split: {{train_file: {idx}, val_file: {idx2}, val: 0.2}}\n",
     "split.train_file and split.val cannot be used together"),
    ("two train sections", "train: {{epochs: 1}}\ntrain: {{epochs: 2}}\n", "duplicated key 'train' (line 6; first given on line 5)"),
    ("duplicated nested key", "train:\n  epochs: 1\n  lr: 0.1\n  epochs: 2\n", "duplicated key 'epochs' (line 8; first given on line 6)"),
    # kind 5: non-finite learning rate
    ("lr .inf", "train: {{lr: .inf}}\n", "'train.lr': Input should be a finite number"),
    ("lr .nan", "train: {{lr: .nan}}\n", "'train.lr': Input should be a finite number"),
    ("grad_clip .inf", "train: {{grad_clip: .inf}}\n", "'train.grad_clip': Input should be a finite number"),
    # kind 6: ordinary errors that were tracebacks
    ("split.train 0", "split: {{train: 0}}\n",
     "'split.train': the training split must hold at least one structure (a count >= 1 or a fraction > 0) (got 0)"),
    ("split.val 0", "split: {{val: 0}}\n", "'split.val': the validation split must hold at least one structure"),
    ("empty index file", "split: {{train_file: {empty}}}\n", "index file is empty (split.train_file)"),
    ("unknown device", "train: {{device: bananas}}\n", "'train.device': unknown device 'bananas'"),
    ("cuda on a CPU machine", "train: {{device: 'cuda:7'}}\n", "train.device: 'cuda:7' asked for"),
    # kind 15: suspicious values
    ("epochs: true", "train: {{epochs: true}}\n", "'train.epochs': expected a number, got the boolean True"),
    ("batch_size: false", "train: {{batch_size: false}}\n", "'train.batch_size': expected a number"),
    ("both loss weights 0", "train: {{energy_weight: 0, forces_weight: 0}}\n", "both 0: the loss would be 0"),
]


@pytest.mark.parametrize("name, text, message", CASES, ids=[c[0] for c in CASES])
def test_bad_config(tmp_path, data, name, text, message):
    import torch

    if "cuda" in text and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    (tmp_path / "idx").write_text("0\n1\n2\n3\n4\n5\n6\n7\n")
    (tmp_path / "idx2").write_text("8\n9\n10\n")
    (tmp_path / "empty").write_text("")
    cfg = _yaml(tmp_path, data, text.format(idx=tmp_path / "idx", idx2=tmp_path / "idx2", empty=tmp_path / "empty"))
    r = cli("train", cfg)
    where = str(tmp_path / "empty") if "empty" in name else str(cfg)
    assert_user_error(r, where, message, nothing_in=tmp_path)
    assert not (tmp_path / "run").exists()


def test_cutoff_without_pairs(tmp_path, data):
    r = cli("train", tiny_config(tmp_path, data, model={"cutoff": 0.01}))
    assert_user_error(r, "model.cutoff: 0.01 Å is shorter than every interatomic distance", "the shortest is",
                      nothing_in=tmp_path)


def test_binary_file_as_config(tmp_path, data):
    import torch

    torch.save({"w": torch.ones(3)}, tmp_path / "model.pt")
    r = cli("train", tmp_path / "model.pt")
    assert_user_error(r, f"{tmp_path / 'model.pt'}: not a YAML config: the file holds binary data")
    (tmp_path / "latin1.yaml").write_bytes("out: r\u00e9sum\u00e9\n".encode("latin-1"))
    assert_user_error(cli("train", tmp_path / "latin1.yaml"), "not UTF-8 text")


# ------------------------------------------------------------------ kind 14: options blamed on the option
@pytest.mark.parametrize("args, message", [
    (("--epochs", "0"), "Invalid value for '--epochs': 0 is not in the range x>=1"),
    (("--device", "bananas"), "--device (train.device)"),
    (("--device", "cuda:7"), "--device (train.device): 'cuda:7' asked for"),
    (("--out", ""), "--out (out)"),
], ids=["--epochs 0", "--device bananas", "--device cuda:7", "--out ''"])
def test_option_errors_name_the_option(tmp_path, data, args, message, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)  # were '--out ""' accepted, the run would land here, not in the checkout
    if args[1] == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    cfg = tiny_config(tmp_path, data)
    r = cli("train", cfg, *args)
    assert_user_error(r, message, nothing_in=tmp_path)
    assert str(cfg) not in r.stderr  # the file is not to blame


# ------------------------------------------------------------------ kind 6 and 8: output directories
def test_out_is_an_existing_file(tmp_path, data):
    (tmp_path / "afile").write_text("mine")
    r = cli("train", tiny_config(tmp_path, data, out=tmp_path / "afile"))
    assert_user_error(r, "out: ", "afile is an existing file, not a directory")
    r = cli("train", tiny_config(tmp_path, data, out=tmp_path / "afile" / "run"))
    assert_user_error(r, "afile is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder(tmp_path, data):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        r = cli("train", tiny_config(tmp_path, data, out=ro / "run"))
        assert_user_error(r, "cannot write in", "permission denied")
    finally:
        ro.chmod(0o700)


def test_own_config_is_never_overwritten(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = f"# my own notes\nout: .\ndata: {{path: {data}}}\nmodel: {{features: 8, interactions: 1, rbf: 4, readout_hidden: 4}}\n"
    (tmp_path / "config.yaml").write_text(text)
    r = cli("train", "config.yaml")
    assert_user_error(r, "config.yaml is the config file you gave")
    assert (tmp_path / "config.yaml").read_text() == text and results(tmp_path) == []


def test_empty_out(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("train", tiny_config(tmp_path, data, out=""))
    assert_user_error(r, "'out': an output directory is needed")
    assert results(tmp_path) == [] and not (tmp_path / "config.yaml").exists()


# ------------------------------------------------------------------ kind 7: errors found before writing
def test_empty_validation_split_writes_nothing_and_the_fix_runs(tmp_path, data):
    cfg = tiny_config(tmp_path, data, split={"train": 23, "val": 0.01, "test": None})
    r = cli("train", cfg)
    assert_user_error(r, "the validation set is empty", nothing_in=tmp_path)
    assert not (tmp_path / "run").exists()
    r = cli("train", tiny_config(tmp_path, data))
    assert r.exit_code == 0, r.output


def test_device_is_not_part_of_the_run(tmp_path, data):
    """A run started with one device resumes with another; a bad device leaves nothing behind."""
    cfg = tiny_config(tmp_path, data)
    assert_user_error(cli("train", cfg, "--device", "bananas"), "--device", nothing_in=tmp_path)
    assert cli("train", cfg, "--device", "cpu").exit_code == 0
    r = cli("train", cfg, "--device", "auto", "--epochs", "3")
    assert r.exit_code == 0 and "best epoch" in r.stdout, r.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["training"]["epochs_run"] == 3


def test_ensemble_with_a_one_structure_validation_set(tmp_path, data):
    r = cli("train", tiny_config(tmp_path, data, split={"train": 20, "val": 1, "test": 3},
                                 uq={"method": "ensemble", "members": 2}))
    assert_user_error(r, "the validation set has 1 structure(s)", "need at least 2", nothing_in=tmp_path)


# ------------------------------------------------------------------ round three, kind 9: no pydantic internals
@pytest.mark.parametrize("sections, message", [
    ({"sampler": "mdd"}, "'sampler': Input should be 'adversarial', 'md' or 'biased_md' (got 'mdd')"),
    ({"sampler": {"ensemble": "mdd"}}, "'sampler.ensemble': Input should be 'adversarial', 'md' or 'biased_md' (got 'mdd')"),
    ({"attack": {"energy_cutoff": [1.0, "x"]}}, "'attack.energy_cutoff.1': Input should be a valid number"),
    ({"init_model": 3}, "'init_model': "),
], ids=["sampler name", "sampler of a method", "cut-off in a list", "init_model a number"])
def test_union_errors_name_the_key_not_the_branches(tmp_path, sections, message):
    """A bad value of a setting that takes several shapes is one message on the user's key, without
    pydantic's names of the union's branches (``literal[...]``, ``dict[str,...]``, ``float``)."""
    from support.badinput import tiny_loop_config

    r = cli("loop", tiny_loop_config(tmp_path, **sections))
    assert_user_error(r, message, nothing_in=tmp_path)
    assert "literal[" not in r.stderr and "dict[" not in r.stderr and "list[" not in r.stderr
    assert ".float" not in r.stderr and r.stderr.count("'init_model'") <= 1


def test_union_error_of_a_training_setting_says_every_choice(tmp_path, data):
    r = cli("train", tiny_config(tmp_path, data, train={"compile": "sometimes"}))
    assert_user_error(r, "'train.compile': Input should be a valid boolean", "or input should be 'auto'",
                      "(got 'sometimes')", nothing_in=tmp_path)


# ------------------------------------------------------------------ round three, kind 3: seeds and lists everywhere
@pytest.mark.parametrize("seed", [-1, 2**32, 2**40], ids=["negative", "2**32", "2**40"])
def test_seed_bounds_in_the_training_config(tmp_path, data, seed):
    for section in ({"seed": seed}, {"split": {"seed": seed, "train": 16, "val": 4, "test": 4}}):
        r = cli("train", tiny_config(tmp_path, data, **section))
        assert_user_error(r, "seed': a seed is an integer in [0, 2**32)", nothing_in=tmp_path)


@pytest.mark.parametrize("args, message", [
    (("reproduce", "ammonia", "--seeds", "-1"), "--seeds '-1': a seed is an integer in [0, 2**32), got -1"),
    (("reproduce", "ammonia", "--seeds", "4294967296"), "--seeds '4294967296': a seed is an integer in [0, 2**32)"),
    (("reproduce", "ammonia", "--seeds", "0,0"), "--seeds '0,0': 0 given more than once"),
    (("reproduce", "rmd17", "--splits", "a,b"), "--splits 'a,b': expected comma-separated integers, got 'a'"),
    (("reproduce", "rmd17", "--splits", "7"), "--splits '7': Input should be less than or equal to 5"),
    (("reproduce", "rmd17", "--splits", "1,1"), "--splits '1,1': 1 given more than once"),
    (("reproduce", "ammonia", "--methods", "ensemble,ensemble"), "--methods 'ensemble,ensemble': ensemble given more"),
    (("reproduce", "ammonia", "--methods", ","), "--methods ',': "),
    (("reproduce", "ammonia", "--molecules", "ethanol"), "--molecules: an option of the rmd17 study"),
    (("reproduce", "ammonia", "--samplers", "md,md"), "--samplers 'md,md': md given more than once"),
    (("data", "build", "ammonia", "--seed", "-1"), "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295"),
    (("data", "build", "silica", "--seed", "4294967296"), "Invalid value for '--seed'"),
    (("data", "fetch", "rmd17", "--seed", "-2"), "Invalid value for '--seed'"),
    (("data", "build", "ammonia", "--oracle", "ase", "--oracle-option", "calculator=ase.calculators.emt.EMT",
      "--oracle-option", "kwargs={asap_cutof: true}"), "'asap_cutof' not among the keyword arguments"),
    (("data", "build", "ammonia", "--oracle", "pyscf", "--oracle-option", "basiss=sto-3g"), "'basiss'"),
], ids=lambda a: " ".join(a) if isinstance(a, tuple) else None)
def test_command_line_lists_and_seeds(tmp_path, args, message, monkeypatch):
    """Kind 3: seeds in [0, 2**32) and lists of distinct, known items on every command line, before anything
    is written or any oracle runs."""
    monkeypatch.chdir(tmp_path)
    r = cli(*args, "--out" if args[0] == "reproduce" else "--dest" if "fetch" in args else "--out", tmp_path / "out")
    assert_user_error(r, message)
    assert not (tmp_path / "out").exists() and "internal error" not in r.output


def test_study_data_seed_and_seeds(tmp_path):
    for text, message in (("seeds: [-3]", "'seeds.0': a seed is an integer in [0, 2**32), got -3"),
                          ("seeds: []", "'seeds': an empty list"),
                          ("data: {seed: 4294967296}", "data.seed: a seed is an integer in [0, 2**32)")):
        study = tmp_path / "study.yaml"
        study.write_text(f"system: ammonia\noracle: {{name: tblite}}\nloop: {{}}\n{text}\n")
        r = cli("loop", study, "--out", tmp_path / "out")
        assert_user_error(r, message)
        assert not (tmp_path / "out").exists()
