"""jac against torch on PyTorch's OpInfo database (see tests/opinfo_sweep.py for what is compared).

A fixed sample of operators runs in every test run: the ones issue 10 found wrong or crashing
(logcumsumexp's NaN jvp, ZeroTensors, zero-size inputs, random operators, masked_select under
vmap) and every 45th operator by name. The whole database runs behind the ``opinfo`` marker,
deselected by default (pyproject.toml): ``pytest -m opinfo tests/test_opinfo.py``, or
``python tests/opinfo_sweep.py`` for the counts and every remaining case.
"""

from __future__ import annotations

import contextlib
import io

import opinfo_sweep as sweep
import pytest

FOUND = [
    "logcumsumexp",
    "sgn",
    "abs",
    "nn.functional.l1_loss",
    "linalg.slogdet",
    "linalg.det",
    "masked_select",
    "nn.functional.dropout",
    "bernoulli",
    "nn.functional.mse_loss",
]
OPS = {sweep.op_id(op): op for op in sweep.operators()}
NO_SAMPLE = "nn.functional.feature_alpha_dropout.with_train"  # none small enough
EVERY_45TH = [name for name in sorted(OPS)[::45] if name != NO_SAMPLE]
FAST = list(dict.fromkeys(FOUND + EVERY_45TH))

# What jac refuses with a clear message (exit 2 or 3) where torch.func answers: outputs jac
# does not write (sparse tensors).
REFUSED_ON_PURPOSE = ("tensor; jac differentiates dense outputs",)


def problems(name: str) -> list:
    with contextlib.redirect_stderr(io.StringIO()):
        tally = sweep.sweep([OPS[name]])
    assert tally.cases, f"{name}: no sample ran"
    return [
        c
        for c in tally.cases
        if c.status in ("mismatch", "error")
        or (c.status == "refused" and not any(r in c.detail for r in REFUSED_ON_PURPOSE))
    ]


@pytest.mark.parametrize("name", FAST)
def test_opinfo_sample(name):
    assert problems(name) == []


@pytest.mark.opinfo
@pytest.mark.parametrize("name", sorted(OPS))
def test_opinfo_full(name):
    assert problems(name) == []
