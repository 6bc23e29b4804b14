"""Sharding a Jacobian over torchrun's processes (gloo on the CPU, 2 ranks on 127.0.0.1).

Each torchrun start costs several seconds, so there are three: reverse mode with an uneven split
of rows, forward mode with an uneven split of columns, and a rank failing mid-way. Options that
cannot be sharded are refused before any process group starts (checked in-process).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_clean_error, jac, write_module

SOURCE = """
import os
import torch

CALLS = [0]

def f(x):  # R^(3,3) -> R^7: 7 rows split 4 + 3, 9 columns split 4 + 5
    CALLS[0] += 1
    if os.environ.get("JAC_TEST_FAIL_RANK") == os.environ.get("RANK") and CALLS[0] >= 2:
        raise RuntimeError("rank " + os.environ["RANK"] + " broke")
    flat = x.reshape(-1)
    return torch.tanh(flat[:7] * flat.sum() + flat[2:].cos())
"""
X = "[[0.3, -1.2, 0.5], [2.0, -0.7, 0.1], [1.5, -0.4, 0.9]]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(folder, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "jaccli", *args,
    ]  # fmt: skip
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=folder, env=full_env, capture_output=True, timeout=300, text=True)


@pytest.fixture
def mod(workdir):
    write_module(workdir, "distmod", SOURCE)
    import importlib

    return importlib.import_module("distmod")


def _x() -> torch.Tensor:
    import yaml

    return torch.tensor(yaml.safe_load(X), dtype=torch.float64)


@pytest.mark.parametrize(
    "command, extra, reference",
    [
        ("jacrev", [], lambda f, x: torch.func.jacrev(f)(x)),
        ("jacobian", ["--mode", "fwd", "--flatten"], lambda f, x: torch.func.jacfwd(f)(x).reshape(7, 9)),
    ],
)
def test_two_ranks_write_what_one_process_computes(mod, workdir, command, extra, reference):
    run = _torchrun(workdir, command, "distmod:f", "-p", X, "--dtype", "float64", "-o", "J.npy", *extra)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("wrote 1 result(s) (jacobian) to J.npy") == 1, run.stderr  # rank 0 alone
    assert "2 ranks" in run.stderr, run.stderr
    np.testing.assert_array_equal(np.load("J.npy", allow_pickle=False), reference(mod.f, _x()).numpy())
    assert sorted(os.listdir(workdir)) in (["J.npy", "distmod.py"], ["J.npy", "__pycache__", "distmod.py"])


def test_a_rank_failing_mid_way_ends_every_rank_and_writes_nothing(mod, workdir):
    np.save("J.npy", np.arange(2.0))
    run = _torchrun(workdir, "jacrev", "distmod:f", "-p", X, "-o", "J.npy", env={"JAC_TEST_FAIL_RANK": "1"})
    assert run.returncode != 0
    assert "rank 1 broke" in run.stderr and "other process(es) failed" in run.stderr, run.stderr
    np.testing.assert_array_equal(np.load("J.npy"), np.arange(2.0))
    assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["jvp", "distmod:f", "-p", X], "does not run under torchrun"),
        (["jacrev", "distmod:f", "-p", X, "-o", "J.npz"], "add -o J.npy"),
        (["jacrev", "distmod:f", "-p", X], "add -o J.npy"),
    ],
)
def test_what_cannot_be_sharded_is_refused_before_starting(mod, monkeypatch, args, needle):
    for name, value in {
        "WORLD_SIZE": "2",
        "RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    assert_clean_error(jac(*args), 2, needle)
    assert not os.path.exists("J.npz")
