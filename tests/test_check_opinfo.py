"""A fast sample of PyTorch's OpInfo database through ``jac check`` (benchmarks/check_opinfo.py runs
them all): float64 on the CPU, the sample's tensors that require grad differentiated. No internal
error, no exception, and the smooth ones PASS; each verdict agrees with torch.autograd.gradcheck's
on the same function."""

from __future__ import annotations

import functools
import importlib.util
import warnings

import pytest
import torch
from conftest import ROOT

from jaccli import Request, run_check

spec = importlib.util.spec_from_file_location("check_opinfo", ROOT / "benchmarks" / "check_opinfo.py")
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)

OPS = [
    "sin",
    "exp",
    "tanh",
    "matmul",
    "softmax",
    "logsumexp",
    "linalg.inv",
    "cumprod",
    "nn.functional.layer_norm",
    "nn.functional.conv2d",
    "max_pool2d_with_indices_backward",
    "atan2",
    "where",
    "logcumsumexp",
]


@functools.lru_cache(maxsize=1)
def _cases():
    warnings.simplefilter("ignore")
    return tuple(sweep.cases(1, set(OPS)))


@pytest.mark.parametrize("name, op, sample", _cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opinfo_sample(name, op, sample):
    fn, primals = sweep.bound(op, sample)
    if not primals:
        pytest.skip("no float input requires grad")  # not counted: the sample has nothing to check
    outcome = run_check(Request("check", fn, primals=primals, dtype="float64", repeat=1, warmup=0))
    report = outcome.report
    assert report.ran, report.rows
    args = tuple(p.clone().requires_grad_(True) for p in primals)
    torch_says = torch.autograd.gradcheck(fn, args, raise_exception=False)
    assert report.passed == torch_says, (name, [(r.name, r.verdict, r.detail) for r in report.rows])


def test_enough_ops_sampled():
    assert len({name.split("#")[0] for name, _, _ in _cases()}) >= 12
