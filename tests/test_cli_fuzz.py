"""Bad user input to ``fedsim run``: each is one line ``error: ...`` with exit status 2 and
no traceback, refused before any training (the config is checked, the data loaded, the
model sized first). Most cases call the typer app in process; one runs the real command
in a subprocess to check stderr and the exit status end to end."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsim.cli import app
from fedsim.data.idx import write_idx

runner = CliRunner()
SMALL = ["--set", "data.name=digits", "--set", "data.num_clients=10", "--set", "clients_per_round=2",
         "--set", "model.name=mlp", "--set", "rounds=1"]


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def npz_member(name: str, header: dict, body: bytes = b"") -> bytes:
    """An .npz whose one member declares ``header`` (shape, dtype) over ``body``."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, header)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name + ".npy", npy.getvalue() + body)
    return buf.getvalue()


def good_npz(tmp: Path, **arrays) -> Path:
    base = {"x_train": np.zeros((20, 4), np.float32), "y_train": np.arange(20) % 2}
    base.update(arrays)
    np.savez(tmp / "d.npz", **base)
    return tmp / "d.npz"


def idx_dir(tmp: Path, name: str, images: bytes) -> Path:
    d = tmp / name
    d.mkdir()
    write(d / "train-images-idx3-ubyte.gz", images)
    write_idx(d / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    write_idx(d / "t10k-images-idx3-ubyte", np.zeros((2, 2, 2), np.uint8))
    write_idx(d / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8))
    return d


def cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(what, arguments after ``run``, a phrase the error must contain)."""
    q = str(Path("configs/quickstart.yaml").resolve())
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))
    idx_bomb = gzip.compress(bytes([0, 0, 8, 3]) + np.array([1 << 20, 1 << 12, 1 << 12], ">u4").tobytes() + b"\0" * 64)
    plain_idx = bytes([0, 0, 8, 3]) + np.array([4, 2, 2], ">u4").tobytes() + b"\0" * 16
    truncated_npz = good_npz(tmp).read_bytes()
    return [
        ("not UTF-8", [str(write(tmp / "latin1.yaml", "name: caf\xe9\n".encode("latin-1")))], "not UTF-8"),
        ("alias bomb", [str(write(tmp / "bomb.yaml", bomb))], "aliases"),
        ("duplicate key", [str(write(tmp / "dup.yaml", "rounds: 2\nrounds: 3\n"))], "duplicate key 'rounds'"),
        ("deep nesting", [str(write(tmp / "deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"))], "config file"),
        ("a directory as config", [str(tmp)], "not found"),
        ("name with /", [q, "--set", "name=a/b"], "config key 'name'"),
        ("name with ..", [q, "--set", "name=x..y"], "'..'"),
        ("name ..", [q, "--set", "name=.."], "config key 'name'"),
        ("seed -1", [q, "--set", "seed=-1"], "config key 'seed'"),
        ("lr inf", [q, "--set", "train.lr=.inf"], "config key 'train.lr'"),
        ("lr nan", [q, "--set", "train.lr=.nan"], "config key 'train.lr'"),
        ("alpha inf", [q, "--set", "data.partition.alpha=.inf"], "config key 'data.partition.alpha'"),
        ("codec density 2", [q, "--set", "codec={name: topk, params: {density: 2.0}}"], "config key 'codec.params'"),
        ("codec levels 0", [q, "--set", "codec={name: dqsg, params: {levels: 0}}"], "levels"),
        ("codec wrong type", [q, "--set", "codec={name: topk, params: {density: [1]}}"], "config key 'codec.params'"),
        ("strategy params out of range", [q, "--set", "strategy={name: trimmed_mean, params: {f: -1}}"],
         "config key 'strategy.params'"),
        ("strategy missing argument", [q, "--set", "strategy.name=json:dumps"], "strategy 'json:dumps'"),
        ("strategy not a strategy", [q, "--set", "strategy.name=collections:OrderedDict"], "not a Flower Strategy"),
        ("strategy not callable", [q, "--set", "strategy.name=os:sep"], "not a Flower Strategy"),
        ("codec not a codec", [q, "--set", "codec.name=collections:OrderedDict"], "not a codec"),
        ("attack not an attack", [q, "--set", "attack={name: 'collections:Counter', count: 1}"], "not an attack"),
        ("module that does not import", [q, "--set", "strategy.name=no_such_module_x:S"], "cannot import"),
        ("num_clients 1e9", [q, "--set", "data.num_clients=1000000000"], "data.num_clients"),
        ("num_clients 1e9 as text", [q, "--set", "data.num_clients=1e9"], "data.num_clients"),
        ("more clients than examples", [q, *SMALL, "--set", "data.num_clients=1500", "--set",
                                        "data.partition.kind=iid", "--set", "data.partition.min_size=1"],
         "cannot give data.num_clients=1500 clients"),
        ("billions of parameters", [q, *SMALL, "--set", "model.params={hidden: 20000000}"], "parameters"),
        ("model params refused", [q, *SMALL, "--set", "model.params={hidden: -3}"], "config key 'model.params'"),
        ("npz not a zip", [q, *SMALL, "--set", "data.name=npz", "--set",
                           f"data.path={write(tmp / 'junk.npz', b'not a zip at all')}"], "junk.npz"),
        ("npz truncated", [q, *SMALL, "--set", "data.name=npz", "--set",
                           f"data.path={write(tmp / 'cut.npz', truncated_npz[: len(truncated_npz) // 2])}"], "cut.npz"),
        ("npz declares 8 TB", [q, *SMALL, "--set", "data.name=npz", "--set", "data.path=" + str(write(
            tmp / "big.npz", npz_member("x_train", {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)})))],
         "more than the limit"),
        ("npz labels out of range", [q, *SMALL, "--set", "data.num_clients=2", "--set", "data.name=npz", "--set",
                                     f"data.path={good_npz(tmp, num_classes=np.int64(1))}"], "num_classes"),
        ("npz num_classes an array", [q, *SMALL, "--set", "data.num_clients=2", "--set", "data.name=npz", "--set",
                                      "data.path=" + str(np.savez(tmp / "nc.npz", x_train=np.zeros((20, 4)),
                                                                  y_train=np.arange(20) % 2,
                                                                  num_classes=np.arange(3)) or tmp / "nc.npz")],
         "num_classes must be an integer scalar"),
        ("npz huge label", [q, *SMALL, "--set", "data.num_clients=2", "--set", "data.name=npz", "--set",
                            "data.path=" + str(np.savez(tmp / "hl.npz", x_train=np.zeros((20, 4)),
                                                        y_train=np.r_[np.zeros(19, int), 10**9]) or tmp / "hl.npz")],
         "num_classes"),
        ("npz missing", [q, *SMALL, "--set", "data.name=npz", "--set", f"data.path={tmp / 'nope.npz'}"], "not found"),
        ("IDX gzip bomb", [q, *SMALL, "--set", "data.name=mnist", "--set",
                           f"data.path={idx_dir(tmp, 'bomb', idx_bomb)}"], "more than the limit"),
        ("IDX corrupt gzip", [q, *SMALL, "--set", "data.name=mnist", "--set",
                              f"data.path={idx_dir(tmp, 'corrupt', gzip.compress(plain_idx)[:-12])}"], "gzip"),
        ("IDX truncated", [q, *SMALL, "--set", "data.name=mnist", "--set",
                           f"data.path={idx_dir(tmp, 'short', gzip.compress(plain_idx[:-5]))}"],
         "expected 16 data bytes"),
        ("trace file not UTF-8", [q, *SMALL, "--set", "network={traces: " + str(write(
            tmp / "t.csv", b"client,uplink_mbps\n0,\xff\n")) + "}"], "config key 'network'"),
        ("trace file missing", [q, *SMALL, "--set", f"network={{traces: {tmp / 'none.csv'}}}"], "does not exist"),
        ("unwritable output", [q, *SMALL, "--out", str(write(tmp / "a-file", "x") / "runs")], "output directory"),
        ("resume and config", [q, "--resume", str(tmp)], "not both"),
        ("resume without checkpoint", ["--resume", str(tmp)], "not found"),
        ("a config and --resume", [q, "--resume", str(tmp)], "not both"),
        ("override without =", [q, "--set", "rounds"], "expected key=value"),
    ]


def test_every_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch):
    failures = []
    all_cases = cases(tmp_path)
    monkeypatch.chdir(tmp_path)  # a case that wrongly started a run would leave runs/ here
    for what, args, needle in all_cases:
        res = runner.invoke(app, ["run", *args])
        text = res.output.strip()
        ok = (res.exit_code == 2 and text.startswith("error:") and len(text.splitlines()) == 1
              and needle in text and "Traceback" not in text and res.exception is None
              or (isinstance(res.exception, SystemExit) and res.exit_code == 2 and needle in text
                  and len(text.splitlines()) == 1))
        if not ok:
            failures.append(f"{what}: exit {res.exit_code}, {text[:300]!r}, {res.exception!r}")
    assert not failures, "\n".join(failures)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_the_command_itself_exits_2_with_one_stderr_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", "name: caf\xe9\n".encode("latin-1"))
    res = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "not UTF-8" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("name", ["ok", "run-1.a_b", "A" * 100])
def test_safe_run_names_are_accepted(name):
    from fedsim.config import load_config

    assert load_config(None, [f"name={name}"]).name == name
