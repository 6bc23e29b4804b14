"""Acceptance tests for ``jac check``: planted wrong derivatives are flagged, correct ones are not.

Layout:

1. a catalogue of PLANTED wrong derivatives (custom ``torch.autograd.Function`` subclasses in
   the modern style -- ``forward`` without ctx, ``setup_context``, ``backward``, ``jvp`` -- plus
   plain torch code that fools autograd: ``torch.no_grad()`` inside, ``.detach()``). Each must
   exit 1 with verdict FAIL, with exactly the expected rows failing, and, where the worst entry
   is determinate, the detail naming it (output index / input index);
2. a catalogue of CORRECT functions, checked from float32 inputs (YAML literal, float32 .npy:
   upcast to float64) and float64 inputs: every row PASS, exit 0; a handful with ``--full``;
3. the options and the contract around the report: ``--dtype``, tolerance overrides,
   ``--directions``, ``-o``, ``--format yaml``, the timing table on stderr, exit codes.

The user functions live in one module written once per test module (``checkfns.py``) and are
named by path (``/tmp/.../checkfns.py:name``). Everything runs in-process through ``jac()``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import yaml
from conftest import assert_clean_error, jac, write_module

from jaccli.checking.more import STEPS
from jaccli.checking.rows import (
    ADJOINT,
    BATCHED_F,
    BATCHED_JVP,
    BATCHED_VJP,
    FD_FORWARD,
    FD_REVERSE,
    FULL_FORWARD,
    FULL_REVERSE,
    FWD_VS_REV,
    REPEATABLE,
    TAYLOR,
)

BASE_ROWS = (FWD_VS_REV, ADJOINT, FD_FORWARD, FD_REVERSE)
LATER_ROWS = (TAYLOR, BATCHED_F, BATCHED_JVP, BATCHED_VJP, REPEATABLE)  # after the --full rows
FULL_ROWS = (FULL_REVERSE, FULL_FORWARD)
DEFAULT_TOL = {"eps": 1e-6, "atol": 1e-5, "rtol": 1e-3}  # torch.autograd.gradcheck's
FLOAT32_TOL = {"eps": 1e-3, "atol": 1e-3, "rtol": 1e-2}

SOURCE = '''
import math

import torch
from torch import nn
from torch.autograd import Function


def _save(ctx, *tensors):
    """Keep tensors for backward and for jvp (forward mode reads ctx.saved_tensors too)."""
    ctx.save_for_backward(*tensors)
    ctx.save_for_forward(*tensors)


# ---- custom autograd.Functions --------------------------------------------------------------


class Sin(Function):
    """sin(x): correct backward and jvp; no vmap rule (jac must loop, not skip)."""

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * torch.cos(x)


class SinVmap(Sin):
    generate_vmap_rule = True


class SinSignBackward(Sin):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return -g * torch.cos(x)


class SinDoubleBackward(Sin):
    generate_vmap_rule = True

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * torch.cos(x)


class SinDoubleJvp(Sin):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return 2 * t * torch.cos(x)


class SinOnePercent(Sin):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 1.01 * g * torch.cos(x)


class SinTinyConsistent(Sin):
    """Forward and reverse agree with each other; both are 1e-4 (relative) off the truth."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return (1 + 1e-4) * g * torch.cos(x)

    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return (1 + 1e-4) * t * torch.cos(x)


class SinWrongEntry2(Sin):
    """backward drops component 2 of the gradient; jvp is right."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        keep = (torch.arange(x.shape[0], device=x.device) != 2).to(x.dtype)
        return g * torch.cos(x) * keep


class SinNanBackward(Sin):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x) / (x - x)  # x/0: not finite


class ExpJvpForgetsFactor(Function):
    """exp(x): backward right, jvp returns t instead of t * exp(x)."""

    @staticmethod
    def forward(x):
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @staticmethod
    def jvp(ctx, t):
        return t.clone()


class SinBackwardOnly(Function):
    """Correct backward, no jvp: forward mode cannot run."""

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class SinBackwardOnlyWrong(SinBackwardOnly):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sin(x)  # the derivative of sin is not sin


class SinBackwardRaises(Sin):
    @staticmethod
    def backward(ctx, g):
        raise ValueError("planted failure in backward")


class SinJvpRaises(Sin):
    @staticmethod
    def jvp(ctx, t):
        raise ValueError("planted failure in jvp")


A = [[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [4.0, 0.0, 1.0]]  # not symmetric


class LinearTransposed(Function):
    """y = A x; backward returns A g instead of A^T g; jvp is right."""

    @staticmethod
    def forward(x):
        return torch.tensor(A, dtype=x.dtype, device=x.device) @ x

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[0])

    @staticmethod
    def backward(ctx, g):
        return torch.tensor(A, dtype=g.dtype, device=g.device) @ g

    @staticmethod
    def jvp(ctx, t):
        return torch.tensor(A, dtype=t.dtype, device=t.device) @ t


B = [  # row 0 dense and large; B[0][3] == 0
    [20.0, 20.0, 20.0, 0.0, 20.0, 20.0],
    [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    [0.5, -1.0, 1.5, -2.0, 2.5, -3.0],
]
HIDDEN = 5e-4  # what both planted derivatives claim for d y0 / d x3 (truth: 0)


class LinearHiddenEntry(Function):
    """y = B x; jvp and backward agree on B + 5e-4 at [0, 3]: only finite differences can tell."""

    @staticmethod
    def _claimed(like):
        b = torch.tensor(B, dtype=like.dtype, device=like.device)
        bump = torch.zeros_like(b)
        bump[0, 3] = HIDDEN
        return b + bump

    @staticmethod
    def forward(x):
        return torch.tensor(B, dtype=x.dtype, device=x.device) @ x

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[0])

    @staticmethod
    def backward(ctx, g):
        return LinearHiddenEntry._claimed(g).T @ g

    @staticmethod
    def jvp(ctx, t):
        return LinearHiddenEntry._claimed(t) @ t


class MulSinWrongSecond(Function):
    """x * sin(y); d/dy uses sin(y) for cos(y); d/dx and the jvp are right."""

    @staticmethod
    def forward(x, y):
        return x * torch.sin(y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * torch.sin(y), g * x * torch.sin(y)

    @staticmethod
    def jvp(ctx, tx, ty):
        x, y = ctx.saved_tensors
        return tx * torch.sin(y) + ty * x * torch.cos(y)


class RowSquaresWrong12(Function):
    """(X**2).sum(1) for a 2-D X; backward triples entry [1, 2] of the gradient."""

    @staticmethod
    def forward(X):
        return (X**2).sum(dim=1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[0])

    @staticmethod
    def backward(ctx, g):
        (X,) = ctx.saved_tensors
        scale = torch.ones_like(X)
        scale[1, 2] = 3.0
        return g[:, None] * 2 * X * scale

    @staticmethod
    def jvp(ctx, t):
        (X,) = ctx.saved_tensors
        return (2 * X * t).sum(dim=1)


class ScaleWrongWeight(Function):
    """x * w; the gradient for w has its sign flipped."""

    @staticmethod
    def forward(x, w):
        return x * w

    @staticmethod
    def setup_context(ctx, inputs, output):
        _save(ctx, *inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w, -g * x

    @staticmethod
    def jvp(ctx, tx, tw):
        x, w = ctx.saved_tensors
        return tx * w + x * tw


class ScaleLayer(nn.Module):
    def __init__(self, wrong):
        super().__init__()
        self.wrong = wrong
        self.weight = nn.Parameter(torch.tensor([0.5, -1.5, 2.0]))

    def forward(self, x):
        if self.wrong:
            return ScaleWrongWeight.apply(x, self.weight)
        return x * self.weight


def scale_layer_wrong():
    return ScaleLayer(True)


# ---- planted: wrong derivatives --------------------------------------------------------------


def sign_backward(x):
    return SinSignBackward.apply(x)


def double_backward(x):
    return SinDoubleBackward.apply(x)


def double_jvp(x):
    return SinDoubleJvp.apply(x)


def one_percent(x):
    return SinOnePercent.apply(x)


def tiny_consistent(x):
    return SinTinyConsistent.apply(x)


def wrong_entry(x):
    return SinWrongEntry2.apply(x)


def nan_backward(x):
    return SinNanBackward.apply(x)


def jvp_wrong(x):
    return ExpJvpForgetsFactor.apply(x)


def backward_only_wrong(x):
    return SinBackwardOnlyWrong.apply(x)


def backward_raises(x):
    return SinBackwardRaises.apply(x)


def jvp_raises(x):
    return SinJvpRaises.apply(x)


def transposed(x):
    return LinearTransposed.apply(x)


def hidden_entry(x):
    return LinearHiddenEntry.apply(x)


def two_inputs(x, y):
    return MulSinWrongSecond.apply(x, y)


def matrix_2d(X):
    return RowSquaresWrong12.apply(X)


def scalar_sign(x):
    return SinSignBackward.apply(x) + x**2


def no_grad_inside(x):
    with torch.no_grad():
        scale = (x * x).sum()  # pytorch#128600: reverse mode sees a constant, forward mode not
    return x * scale


def detached(x):
    return x * x.detach()  # both modes see d/dx = x; the truth is 2x


def tuple_wrong(x):
    return torch.exp(x), SinSignBackward.apply(x)


def dict_wrong(x):
    return {"a": torch.exp(x), "b": SinDoubleBackward.apply(x)}


# ---- correct ---------------------------------------------------------------------------------


def sin_exp_log(x):
    return torch.log(2 + torch.sin(x)) * torch.exp(-x * x) + torch.sin(torch.exp(0.5 * x))


def rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def softmax(x):
    return torch.softmax(x, dim=-1)


def matmul(a, b):
    return a @ b


def tuple_out(x):
    return torch.sin(x), x.sum() * x


def dict_out(x):
    return {"a": torch.exp(x), "b": torch.cumsum(x, 0) ** 2}


def cubic(x):
    return x**3 + torch.sin(x)


def rows_2d(X):
    return (torch.tanh(X) ** 2).sum(dim=1)


def custom_sin(x):
    return Sin.apply(x) * x


def custom_sin_vmap(x):
    return SinVmap.apply(x) + x**2


def custom_backward_only(x):
    return SinBackwardOnly.apply(x) * 2


def normalize(x):
    return x / torch.sqrt((x * x).sum() + 1e-6)


def logsumexp(x):
    return torch.logsumexp(x, dim=0)


def attention(q, k, v):
    scores = q @ k.T / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def constant(x):
    return torch.full((3,), 2.0, dtype=x.dtype)


def unused_second(x, y):
    return torch.sin(x) * 2.0


def with_aux(x):
    return torch.sin(x) * x, {"note": x.sum()}


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.fc2 = nn.Linear(5, 3)
        with torch.no_grad():  # fixed, seed-free weights
            for i, p in enumerate(self.parameters()):
                p.copy_(torch.sin(torch.arange(p.numel(), dtype=p.dtype) * 0.7 + i).reshape(p.shape))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def mlp():
    return MLP()


# ---- misc ------------------------------------------------------------------------------------


def raises(x):
    raise ValueError("planted failure in the function")


def raises_in_fd(x):
    if not torch.is_grad_enabled():
        raise RuntimeError("planted failure away from autograd")
    return torch.sin(x)


CALLS = {"no_grad": 0, "all": 0}


def counted(x):
    CALLS["all"] += 1
    if not torch.is_grad_enabled():  # finite differences: plain evaluations
        CALLS["no_grad"] += 1
    return torch.sin(x) * x


def chatty(x):
    print("hello from the user's function")
    return torch.sin(x)
'''

MODULE = "checkfns"
LOADED_AS = "_jac_user_checkfns"  # the name jac gives a module loaded by path

X5 = [0.1, 0.2, 0.3, 0.4, 0.5]
X4 = [0.3, -1.2, 0.8, 2.0]
X6 = [0.3, -0.7, 1.1, 0.5, -0.2, 0.9]


@pytest.fixture(scope="module")
def fns(tmp_path_factory):
    """The user module, written once; returns its folder."""
    folder = tmp_path_factory.mktemp("checkfns")
    write_module(folder, MODULE, SOURCE)
    return folder


@pytest.fixture(scope="module")
def fns_module(fns):
    """The same module imported here, for preconditions checked with torch directly."""
    spec = importlib.util.spec_from_file_location("checkfns_direct", fns / f"{MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def target(folder, name: str) -> str:
    return f"{folder / (MODULE + '.py')}:{name}"


def primal_args(primals, variant: str, folder) -> list[str]:
    """-p arguments: 'yaml' (inline literal: float32), 'npy32' or 'npy64' (.npy files)."""
    args = []
    for i, value in enumerate(primals):
        if variant == "yaml":
            args += ["-p", json.dumps(value)]
        else:
            dtype = {"npy32": np.float32, "npy64": np.float64}[variant]
            path = folder / f"primal{i}_{variant}.npy"
            np.save(path, np.asarray(value, dtype=dtype))
            args += ["-p", str(path)]
    return args


def run_check(folder, func: str, primals, *extra: str, variant: str = "yaml", data=None):
    """``jac check`` with a JSON report on stdout: (Run, parsed report or None)."""
    run = jac(
        "check",
        target(folder, func),
        *primal_args(primals, variant, data or folder),
        *extra,
        "--format",
        "json",
        "--no-timings",
    )
    doc = without_record(json.loads(run.stdout)) if run.code in (0, 1) else None
    return run, doc


def without_record(doc: dict) -> dict:
    """A report less its reproducibility record, which must be there (tests/test_record.py)."""
    doc = dict(doc)
    record = doc.pop("record")
    assert record["argv"][:2] == ["jac", "check"] and record["command"].startswith("check"), record
    return doc


def rows_of(doc) -> dict[str, dict]:
    return {row["check"]: row for row in doc["checks"]}


def verdicts(doc) -> dict[str, str]:
    return {row["check"]: row["verdict"] for row in doc["checks"]}


def assert_report_shape(doc, full: bool) -> None:
    assert set(doc) == {"verdict", "dtype", "eps", "atol", "rtol", "checks"}, doc
    names = [row["check"] for row in doc["checks"]]
    assert names == list(BASE_ROWS + (FULL_ROWS if full else ()) + LATER_ROWS), names
    for row in doc["checks"]:
        keys = {"check", "verdict", "max_abs_error", "max_rel_error", "detail"}
        assert set(row) == (keys | {"slope"} if row["check"] == TAYLOR else keys), row
        assert row["verdict"] in ("PASS", "FAIL", "SKIPPED"), row
        if row["verdict"] == "SKIPPED":
            assert row["max_abs_error"] is None and row["detail"], row
        else:
            keys = ("max_abs_error", "max_rel_error")
            if row["check"] in (TAYLOR, REPEATABLE):  # a remainder, a difference: no relative error
                keys = ("max_abs_error",)
            for key in keys:  # JSON spells non-finite as strings
                assert isinstance(row[key], float) or row[key] in ("NaN", "Infinity"), row
        if row["verdict"] == "FAIL" and row["check"] not in (TAYLOR, REPEATABLE):
            assert row["detail"].startswith("worst at "), row


# ==== 1. planted wrong derivatives ================================================================


@dataclass
class Planted:
    id: str
    func: str
    primals: list
    rows: str  # expected verdicts of BASE_ROWS: P(ass) F(ail) S(kipped), e.g. "FFPF"
    full_rows: str  # expected verdicts of FULL_ROWS with --full
    details: dict = field(default_factory=dict)  # row -> substring of the detail (no --full)
    full_details: dict = field(default_factory=dict)  # row -> substring, with --full
    extra: tuple = ()
    variant: str = "yaml"
    rows_full: str | None = None  # BASE_ROWS with --full, when other than ``rows``


PLANTED = [
    Planted(
        "sign-in-backward",
        "sign_backward",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output[0] / d primal 0[0]: forward 0.995004 vs reverse -0.995004"},
        {FULL_REVERSE: "d output[0] / d primal 0[0]: reverse -0.995004 vs fd 0.995004"},
    ),
    Planted(
        "factor-2-in-backward",
        "double_backward",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "d output[0] / d primal 0[0]"},
        {FULL_REVERSE: "d output[0] / d primal 0[0]"},
    ),
    Planted(
        "factor-2-in-jvp",
        "double_jvp",
        [X5],
        "FFFP",
        "PF",
        {FWD_VS_REV: "d output[0] / d primal 0[0]: forward 1.99001 vs reverse 0.995004"},
        {FULL_FORWARD: "d output[0] / d primal 0[0]"},
    ),
    # backward returns A g, not A^T g: forward gives J[2,0] = A[2,0] = 4, reverse A[0,2] = 0
    Planted(
        "transposed-jacobian",
        "transposed",
        [[0.3, -0.7, 1.1]],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output[2] / d primal 0[0]: forward 4 vs reverse 0"},
        {FULL_REVERSE: "worst at d output[0] / d primal 0[2]: reverse 4 vs fd 0"},
    ),
    Planted(
        "one-wrong-entry",
        "wrong_entry",
        [X5],
        "FFPF",
        "FP",
        {
            FWD_VS_REV: "worst at d output[2] / d primal 0[2]: forward 0.955336 vs reverse 0",
            FD_REVERSE: ", output[2]: reverse 0 vs fd ",
        },
        {FULL_REVERSE: "worst at d output[2] / d primal 0[2]: reverse 0 vs fd 0.955336"},
    ),
    Planted(
        "backward-only-wrong",
        "backward_only_wrong",
        [X5],
        "SSSF",
        "FS",
        {FWD_VS_REV: "jvp", FD_FORWARD: "forward mode"},
        {FULL_REVERSE: "d output[0] / d primal 0[0]", FULL_FORWARD: "jvp"},
    ),
    Planted(
        "jvp-only-wrong",
        "jvp_wrong",
        [X5],
        "FFFP",
        "PF",
        {FWD_VS_REV: "worst at d output[4] / d primal 0[4]: forward 1 vs reverse 1.64872"},
        {FULL_FORWARD: "worst at d output[4] / d primal 0[4]: forward 1 vs fd 1.64872"},
    ),
    Planted(
        "no-grad-inside",
        "no_grad_inside",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output[4] / d primal 0[4]: forward 1.05 vs reverse 0.55"},
        {FULL_REVERSE: "worst at d output[4] / d primal 0[4]: reverse 0.55 vs fd 1.05"},
    ),
    Planted(
        "second-input-only",
        "two_inputs",
        [[0.5, -1.0, 2.0], [0.3, 1.2, -0.8]],
        "FFPF",
        "FP",
        {FWD_VS_REV: "/ d primal 1["},
        {FULL_REVERSE: "/ d primal 1["},
    ),
    Planted(
        "tuple-output",
        "tuple_wrong",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output.1[0] / d primal 0[0]", FD_REVERSE: ", output.1["},
        {FULL_REVERSE: "worst at d output.1[0] / d primal 0[0]"},
    ),
    Planted(
        "dict-output",
        "dict_wrong",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output.b[0] / d primal 0[0]", FD_REVERSE: ", output.b["},
        {FULL_REVERSE: "worst at d output.b[0] / d primal 0[0]"},
    ),
    Planted(
        "2-d-input",
        "matrix_2d",
        [[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output[1] / d primal 0[1, 2]: forward 1.2 vs reverse 3.6"},
        {FULL_REVERSE: "worst at d output[1] / d primal 0[1, 2]: reverse 3.6 vs fd 1.2"},
    ),
    # 1 % off in backward: far beyond gradcheck's rtol 1e-3, so the defaults catch it
    Planted(
        "one-percent-off",
        "one_percent",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output[0] / d primal 0[0]: forward 0.995004 vs reverse 1.00495"},
        {FULL_REVERSE: "d output[0] / d primal 0[0]"},
    ),
    Planted(
        "sign-from-float32-npy",
        "sign_backward",
        [X5],
        "FFPF",
        "FP",
        {FWD_VS_REV: "worst at d output[0] / d primal 0[0]: forward 0.995004 vs reverse -0.995004"},
        variant="npy32",
    ),
    Planted("sign-from-float64-npy", "sign_backward", [X5], "FFPF", "FP", variant="npy64"),
    # forward and reverse agree (both wrong): only finite differences can tell
    Planted(
        "detach-both-modes-wrong",
        "detached",
        [X5],
        "PPFF",
        "FF",
        {},
        {FULL_REVERSE: "worst at d output[4] / d primal 0[4]: reverse 0.5 vs fd 1"},
    ),
    Planted("nan-in-backward", "nan_backward", [X5], "FFPF", "FP"),
    Planted("0-d-input", "scalar_sign", [0.5], "FFPF", "FP"),
    Planted(
        "wrt-params",
        "scale_layer_wrong()",
        [[1.0, 2.0, 3.0]],
        "SFPF",  # no whole parameter Jacobian unless --full: the modes meet along directions
        "FP",
        {FWD_VS_REV: "not computed under --wrt params", FD_REVERSE: "worst at pair (u, v) "},
        {
            FULL_REVERSE: "/ d parameter weight[",
            FWD_VS_REV: "worst at d output[2] / d parameter weight[2]: forward 3 vs reverse -3",
            FD_REVERSE: "worst at direction ",
        },
        extra=("--wrt", "params"),
        rows_full="FFPF",
    ),
    # 1e-4 relative, consistent in both modes: within gradcheck's defaults (see
    # test_small_errors_pass_the_defaults), caught by a tight tolerance
    Planted(
        "tiny-error-tight-tolerance",
        "tiny_consistent",
        [X5],
        "PPFF",
        "FF",
        extra=("--rtol", "1e-6", "--atol", "1e-9"),
    ),
    # B[0, 3] claimed 5e-4 (truth 0) by both modes: --full names the very entry
    Planted(
        "hidden-entry-full-tight",
        "hidden_entry",
        [X6],
        "PPFF",
        "FF",
        {},
        {FULL_REVERSE: "worst at d output[0] / d primal 0[3]: reverse 0.0005 vs fd 0"},
        extra=("--rtol", "1e-6", "--atol", "1e-9"),
    ),
]


def _letters(doc, names) -> str:
    got = verdicts(doc)
    return "".join(got[name][0] for name in names)


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
@pytest.mark.parametrize("case", PLANTED, ids=[p.id for p in PLANTED])
def test_planted_wrong_derivative_is_flagged(fns, tmp_path, case, full):
    extra = case.extra + (("--full",) if full else ())
    run, doc = run_check(fns, case.func, case.primals, *extra, variant=case.variant, data=tmp_path)
    assert run.code == 1, run
    assert doc["verdict"] == "FAIL", doc
    assert doc["dtype"] == "float64", doc  # float32 literals and .npy are upcast
    assert_report_shape(doc, full)
    assert _letters(doc, BASE_ROWS) == (case.rows_full if full and case.rows_full else case.rows), doc
    if full:
        assert _letters(doc, FULL_ROWS) == case.full_rows, doc
    rows = rows_of(doc)
    for name, needle in {**case.details, **(case.full_details if full else {})}.items():
        assert needle in rows[name]["detail"], (name, needle, rows[name])
    for row in doc["checks"]:
        if row["verdict"] == "FAIL" and row["check"] != TAYLOR:  # Taylor: a remainder, not an error
            # the reported error really is beyond the tolerance
            assert not float(row["max_abs_error"]) <= doc["atol"], row
        if row["verdict"] == "PASS" and row["check"] != TAYLOR:  # the Taylor row says its slope
            assert row["detail"] == "", row


def test_enough_planted_cases():
    assert len({p.func for p in PLANTED}) >= 12
    assert len(PLANTED) >= 12


def test_planted_text_report_names_the_worst_entry(fns):
    run = jac("check", target(fns, "wrong_entry"), "-p", json.dumps(X5), "--no-timings")
    assert run.code == 1, run
    lines = run.stdout.splitlines()
    table = {line.split()[0] + " " + line.split()[1]: line for line in lines[1:5]}
    assert "FAIL" in table["forward vs"] and "PASS" in table["fd: forward"], run.stdout
    worst = "  FAIL forward vs reverse: worst at d output[2] / d primal 0[2]: forward 0.955336 vs reverse 0"
    assert worst in lines, run.stdout
    assert any(
        re.fullmatch(
            r"  FAIL fd: reverse J\.v: worst at direction \d, output\[2\]: reverse 0 vs fd \S+", line
        )
        for line in lines
    ), run.stdout
    assert not any("fd: forward J.v:" in line for line in lines), run.stdout  # it passed
    assert lines[-1].startswith("FAIL in float64"), run.stdout
    assert "atol 1e-05, rtol 0.001" in lines[-1] and "eps 1e-06" in lines[-1], run.stdout
    assert run.stderr == "", run


def test_planted_error_caught_at_float32(fns):
    run, doc = run_check(fns, "sign_backward", [X5], "--dtype", "float32")
    assert run.code == 1, run
    assert doc["dtype"] == "float32" and _letters(doc, BASE_ROWS) == "FFPF", doc


def test_small_errors_pass_the_defaults(fns):
    """What gradcheck's defaults can and cannot see: a 1e-4 relative error that forward and
    reverse share passes; 1 % does not (test_planted_wrong_derivative_is_flagged)."""
    run, doc = run_check(fns, "tiny_consistent", [X5], "--full")
    assert run.code == 0 and _letters(doc, BASE_ROWS + FULL_ROWS) == "PPPPPP", doc
    # and the tight tolerance that catches it raises no false alarm on the correct function
    run, doc = run_check(fns, "custom_sin", [X5], "--rtol", "1e-6", "--atol", "1e-9", "--full")
    assert run.code == 0 and _letters(doc, BASE_ROWS + FULL_ROWS) == "PPPPPP", doc


def test_hidden_entry_needs_full(fns):
    """A wrong entry whose true value is 0, in a dense row: drowned in J.v for random directions
    (seed 0), named exactly by --full even with the default tolerances."""
    run, doc = run_check(fns, "hidden_entry", [X6], "--seed", "0")
    assert run.code == 0 and _letters(doc, BASE_ROWS) == "PPPP", doc
    run, doc = run_check(fns, "hidden_entry", [X6], "--seed", "0", "--full")
    assert run.code == 1 and _letters(doc, BASE_ROWS + FULL_ROWS) == "PPPPFF", doc
    for name, side in zip((FULL_REVERSE, FULL_FORWARD), ("reverse", "forward")):
        detail = rows_of(doc)[name]["detail"]
        assert f"worst at d output[0] / d primal 0[3]: {side} 0.0005 vs fd 0" in detail, doc


def test_no_vmap_rule_still_compares_forward_and_reverse(fns, fns_module):
    """An autograd.Function without a vmap rule: jacrev/jacfwd cannot batch it, so jac loops."""
    import torch

    x = torch.tensor(X5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="vmap"):
        torch.func.jacfwd(fns_module.custom_sin)(x)  # the precondition: jacfwd cannot batch it
    _, doc = run_check(fns, "custom_sin", [X5])
    assert verdicts(doc)[FWD_VS_REV] == "PASS", doc
    assert rows_of(doc)[FWD_VS_REV]["max_abs_error"] < 1e-12, doc  # exact, not finite differences
    _, doc = run_check(fns, "sign_backward", [X5])
    assert verdicts(doc)[FWD_VS_REV] == "FAIL", doc


# ==== 2. correct functions ========================================================================


@dataclass
class Correct:
    id: str
    func: str
    primals: list
    extra: tuple = ()


ATTENTION = [
    np.linspace(-1, 1, 6).reshape(2, 3).tolist(),
    np.cos(np.arange(12.0)).reshape(4, 3).tolist(),
    np.sin(np.arange(12.0)).reshape(4, 3).tolist(),
]
CORRECT = [
    Correct("sin-exp-log", "sin_exp_log", [X4]),
    Correct("rosenbrock", "rosenbrock", [[0.5, -0.3, 1.2, 0.9]]),
    Correct("softmax", "softmax", [[0.2, -1.0, 0.5, 2.0]]),
    Correct(
        "matmul-two-inputs",
        "matmul",
        [[[1.0, 2.0, 0.5], [-0.3, 0.7, 1.1]], [[0.4, -1.0], [2.0, 0.1], [0.3, 0.6]]],
    ),
    Correct("tuple-output", "tuple_out", [X5]),
    Correct("dict-output", "dict_out", [X5]),
    Correct("0-d-input", "cubic", [0.7]),
    Correct("2-d-input-reduction", "rows_2d", [[[0.1, -0.4, 0.8], [1.2, 0.3, -0.6]]]),
    Correct("custom-function-no-vmap", "custom_sin", [X5]),
    Correct("custom-function-vmap", "custom_sin_vmap", [X5]),
    Correct("norm-with-eps", "normalize", [X4]),
    Correct("logsumexp", "logsumexp", [X4]),
    Correct("attention", "attention", ATTENTION),
    Correct("tanh-mlp-factory", "mlp()", [X4]),
    Correct("tanh-mlp-wrt-params", "mlp()", [X4], ("--wrt", "params")),
    Correct("constant-output", "constant", [X5]),
    Correct("unused-second-input", "unused_second", [X5, [1.0, 2.0]]),
    Correct("has-aux", "with_aux", [X5], ("--has-aux",)),
]
FULL_TOO = {
    "sin-exp-log",
    "matmul-two-inputs",
    "dict-output",
    "0-d-input",
    "2-d-input-reduction",
    "custom-function-no-vmap",
    "attention",
    "tanh-mlp-wrt-params",
    "unused-second-input",
}


@pytest.mark.parametrize("variant", ["yaml", "npy32", "npy64"])
@pytest.mark.parametrize("case", CORRECT, ids=[c.id for c in CORRECT])
def test_correct_function_is_not_flagged(fns, tmp_path, case, variant):
    run, doc = run_check(fns, case.func, case.primals, *case.extra, variant=variant, data=tmp_path)
    assert run.code == 0, run
    assert doc["verdict"] == "PASS" and doc["dtype"] == "float64", doc
    assert {k: doc[k] for k in DEFAULT_TOL} == DEFAULT_TOL, doc
    assert_report_shape(doc, full=False)
    if "params" in case.extra:  # no whole parameter Jacobian unless --full; every other check ran
        assert _letters(doc, BASE_ROWS) == "SPPP", doc
        assert "not computed under --wrt params" in rows_of(doc)[FWD_VS_REV]["detail"], doc
    else:
        assert _letters(doc, BASE_ROWS) == "PPPP", doc  # every check ran: none skipped
        assert rows_of(doc)[FWD_VS_REV]["max_abs_error"] < 1e-9, doc


@pytest.mark.parametrize("variant", ["yaml", "npy64"])
@pytest.mark.parametrize(
    "case", [c for c in CORRECT if c.id in FULL_TOO], ids=sorted(FULL_TOO, key=[c.id for c in CORRECT].index)
)
def test_correct_function_passes_full(fns, tmp_path, case, variant):
    run, doc = run_check(fns, case.func, case.primals, *case.extra, "--full", variant=variant, data=tmp_path)
    assert run.code == 0, run
    assert_report_shape(doc, full=True)
    assert _letters(doc, BASE_ROWS + FULL_ROWS) == "PPPPPP", doc


def test_enough_correct_cases():
    assert len({c.func for c in CORRECT}) >= 12


def test_correct_text_report(fns):
    run = jac("check", target(fns, "attention"), *primal_args(ATTENTION, "yaml", fns), "--no-timings")
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    assert "FAIL" not in run.stdout and "SKIPPED" not in run.stdout, run.stdout
    for name in BASE_ROWS:
        assert any(line.strip().startswith(name) and line.rstrip().endswith("PASS") for line in lines), name
    assert lines[-1].startswith("PASS in float64"), run.stdout


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
def test_backward_only_function_skips_forward_checks(fns, full):
    extra = ("--full",) if full else ()
    run, doc = run_check(fns, "custom_backward_only", [X5], *extra)
    assert run.code == 0, run
    assert doc["verdict"] == "PASS", doc
    assert_report_shape(doc, full)
    assert _letters(doc, BASE_ROWS) == "SSSP", doc
    if full:
        assert _letters(doc, FULL_ROWS) == "PS", doc
    for row in doc["checks"]:
        if row["verdict"] == "SKIPPED" and row["check"] in BASE_ROWS + FULL_ROWS:
            assert "forward mode" in row["detail"] and "jvp" in row["detail"], row
            assert row["max_abs_error"] is None and row["max_rel_error"] is None, row
    # the text report says SKIPPED, with the reason, and never PASS for those rows
    run = jac("check", target(fns, "custom_backward_only"), "-p", json.dumps(X5), "--no-timings", *extra)
    assert run.code == 0, run
    lines = run.stdout.splitlines()
    for name in (FWD_VS_REV, ADJOINT, FD_FORWARD):
        row_line = next(line for line in lines if line.strip().startswith(name))  # the table row
        assert row_line.rstrip().endswith("SKIPPED") and "PASS" not in row_line, row_line
        assert any(line.startswith(f"  SKIPPED {name}: forward mode failed") for line in lines), run.stdout


# ==== 3. options and the contract around the report ================================================


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CORRECT
        if c.id
        in {
            "sin-exp-log",
            "rosenbrock",
            "softmax",
            "0-d-input",
            "attention",
            "tanh-mlp-factory",
            "tanh-mlp-wrt-params",
            "norm-with-eps",
            "custom-function-no-vmap",
            "logsumexp",
        }
    ],
    ids=lambda c: c.id,
)
def test_dtype_float32_no_false_alarm(fns, tmp_path, case, full):
    extra = case.extra + ("--dtype", "float32") + (("--full",) if full else ())
    run, doc = run_check(fns, case.func, case.primals, *extra, variant="npy64", data=tmp_path)
    assert run.code == 0, run
    assert doc["dtype"] == "float32", doc  # kept, not upcast
    assert {k: doc[k] for k in FLOAT32_TOL} == FLOAT32_TOL, doc  # looser defaults
    expected = "SPPP" if "params" in case.extra and not full else "PPPP"  # see test_correct_function_...
    assert _letters(doc, BASE_ROWS) == expected, doc


@pytest.mark.parametrize("func, primals", [("cubic", [0.7]), ("custom_sin", [X4]), ("sin_exp_log", [X4])])
def test_dtype_float16_no_false_alarm(fns, func, primals):
    run, doc = run_check(fns, func, primals, "--dtype", "float16")
    assert run.code == 0, run
    assert doc["dtype"] == "float16", doc
    assert _letters(doc, BASE_ROWS) == "PPPP", doc


def test_tolerance_overrides_appear_and_apply(fns):
    run, doc = run_check(fns, "one_percent", [X5], "--rtol", "0.05", "--atol", "0.125", "--eps", "1e-4")
    assert (doc["rtol"], doc["atol"], doc["eps"]) == (0.05, 0.125, 1e-4), doc
    assert run.code == 0 and _letters(doc, BASE_ROWS) == "PPPP", doc  # 1 % is within rtol 5 %
    # an override of one leaves the others at their defaults
    run, doc = run_check(fns, "custom_sin", [X5], "--atol", "0.5")
    assert (doc["rtol"], doc["atol"], doc["eps"]) == (1e-3, 0.5, 1e-6), doc
    run, doc = run_check(fns, "custom_sin", [X5], "--dtype", "float32", "--rtol", "0.2")
    assert (doc["rtol"], doc["atol"], doc["eps"]) == (0.2, 1e-3, 1e-3), doc
    # the text footer shows them too
    run = jac(
        "check",
        target(fns, "custom_sin"),
        "-p",
        json.dumps(X5),
        "--no-timings",
        "--rtol",
        "0.25",
        "--atol",
        "0.125",
        "--eps",
        "0.0001",
    )
    assert "atol 0.125, rtol 0.25" in run.stdout and "eps 0.0001" in run.stdout, run


def test_eps_override_is_used(fns):
    """A huge step makes the central difference of sin visibly wrong (truncation ~ eps^2 / 6)."""
    run, doc = run_check(fns, "custom_sin", [X5], "--eps", "0.5")
    assert run.code == 1, run
    assert _letters(doc, BASE_ROWS) == "PPFF", doc
    assert doc["eps"] == 0.5


@pytest.mark.parametrize("directions", [1, 5])
def test_directions(fns, directions):
    """Each direction costs two plain evaluations (f(x + eps v), f(x - eps v)); --full adds two per
    input element; the Taylor row one per step h, the repeatability row one."""
    run, doc = run_check(fns, "counted", [X5], "--directions", str(directions))
    assert run.code == 0, run
    assert sys.modules[LOADED_AS].CALLS["no_grad"] == 2 * directions + STEPS + 1
    run, doc = run_check(fns, "counted", [X5], "--directions", str(directions), "--full")
    assert run.code == 0, run
    assert sys.modules[LOADED_AS].CALLS["no_grad"] == 2 * directions + 2 * len(X5) + STEPS + 1


def test_directions_must_be_positive(fns):
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps(X5), "--directions", "0")
    assert run.code == 2, run
    assert "--directions" in run.stderr and run.stdout_bytes == b"", run


@pytest.mark.parametrize(
    "option, value", [("--rtol", "-1"), ("--atol", "-1e-5"), ("--eps", "0"), ("--eps", "-1e-6")]
)
def test_nonsense_tolerance_is_a_usage_error(fns, option, value):
    """A negative tolerance fails every row; eps 0 divides by zero: both are input errors."""
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps(X5), option, value)
    assert_clean_error(run, 2, option)


def test_out_writes_the_report_atomically(fns, workdir, monkeypatch):
    x = json.dumps(X5)
    _, expected = run_check(fns, "wrong_entry", [X5])
    (workdir / "report.json").write_text("an older report\n")
    seen = {}
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):  # at the rename: the old file intact, the new one complete
        seen["old"] = open(dst).read()
        seen["new"] = without_record(json.loads(open(src).read()))
        seen["same_folder"] = os.path.dirname(os.path.abspath(src)) == os.path.dirname(os.path.abspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    run = jac("check", target(fns, "wrong_entry"), "-p", x, "-o", "report.json")
    assert run.code == 1, run  # the report of a failed check is still written
    assert run.stdout_bytes == b"", run
    assert seen == {"old": "an older report\n", "new": expected, "same_folder": True}
    assert without_record(json.loads((workdir / "report.json").read_text())) == expected
    assert sorted(os.listdir(workdir)) == ["report.json"]  # no temporary file left
    assert "load function" in run.stderr  # the timing table still goes to stderr


def test_out_yaml_and_stdout_dash(fns, workdir):
    _, expected = run_check(fns, "custom_sin", [X5])
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps(X5), "-o", "report.yaml")
    assert run.code == 0 and run.stdout_bytes == b"", run
    assert without_record(yaml.safe_load((workdir / "report.yaml").read_text())) == expected
    run = jac(
        "check",
        target(fns, "custom_sin"),
        "-p",
        json.dumps(X5),
        "-o",
        "-",
        "--format",
        "json",
        "--no-timings",
    )
    assert run.code == 0 and without_record(json.loads(run.stdout)) == expected, run


def test_out_untouched_on_error(fns, workdir):
    (workdir / "report.json").write_text("keep me\n")
    run = jac("check", target(fns, "raises"), "-p", json.dumps(X5), "-o", "report.json")
    assert_clean_error(run, 3, "planted failure in the function")
    assert (workdir / "report.json").read_text() == "keep me\n"
    assert sorted(os.listdir(workdir)) == ["report.json"]
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps(X5), "-o", "missing/report.json")
    assert_clean_error(run, 2, "missing")
    assert sorted(os.listdir(workdir)) == ["report.json"]


def test_out_write_failure_changes_nothing(fns, workdir, monkeypatch):
    (workdir / "report.json").write_text("keep me\n")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps(X5), "-o", "report.json")
    assert run.code == 2, run
    assert "report.json" in run.stderr and "Traceback" not in run.stderr, run
    assert (workdir / "report.json").read_text() == "keep me\n"
    assert sorted(os.listdir(workdir)) == ["report.json"]


@pytest.mark.parametrize("func, code", [("wrong_entry", 1), ("custom_sin", 0)])
def test_format_yaml_matches_json(fns, func, code):
    _, expected = run_check(fns, func, [X5])
    run = jac("check", target(fns, func), "-p", json.dumps(X5), "--format", "yaml", "--no-timings")
    assert run.code == code, run
    assert without_record(yaml.safe_load(run.stdout)) == expected


@pytest.mark.parametrize("fmt", ["npz", "npy"])
def test_binary_formats_are_refused(fns, fmt):
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps(X5), "--format", fmt)
    assert_clean_error(run, 2, fmt)


@pytest.mark.parametrize("fmt", ["text", "json", "yaml"])
def test_timing_table_on_stderr(fns, fmt):
    run = jac("check", target(fns, "sign_backward"), "-p", json.dumps(X5), "--format", fmt)
    assert run.code == 1, run
    for phase in ("load function", "read inputs", "move to device", "checks", "function alone", "write"):
        assert re.search(rf"^  {phase}  ", run.stderr, re.M), (phase, run.stderr)
        assert not re.search(rf"^  {phase}  ", run.stdout, re.M), (phase, run.stdout)
    assert "dtype float64" in run.stderr and "torch" in run.stderr, run.stderr
    if fmt == "json":
        assert json.loads(run.stdout)["verdict"] == "FAIL"
    elif fmt == "yaml":
        assert yaml.safe_load(run.stdout)["verdict"] == "FAIL"
    quiet = jac("check", target(fns, "sign_backward"), "-p", json.dumps(X5), "--format", fmt, "--no-timings")
    assert quiet.code == 1 and quiet.stderr == "", quiet
    if fmt == "text":
        assert quiet.stdout == run.stdout, quiet
    else:  # the same report; the record names each command line
        parse = json.loads if fmt == "json" else yaml.safe_load
        loud, hushed = parse(run.stdout), parse(quiet.stdout)
        assert without_record(hushed) == without_record(loud)
        assert hushed["record"]["argv"] == [*loud["record"]["argv"], "--no-timings"]


def test_user_prints_do_not_corrupt_the_report(fns):
    run = jac("check", target(fns, "chatty"), "-p", json.dumps(X5), "--format", "json", "--no-timings")
    assert run.code == 0, run
    assert json.loads(run.stdout)["verdict"] == "PASS"
    assert "hello from the user's function" in run.stderr


@pytest.mark.parametrize(
    "func, needle",
    [("raises", "planted failure in the function"), ("raises_in_fd", "planted failure away from autograd")],
)
def test_function_that_raises_exits_3(fns, func, needle):
    for fmt in ("text", "json"):
        run = jac("check", target(fns, func), "-p", json.dumps(X5), "--format", fmt)
        assert_clean_error(run, 3, needle)


@pytest.mark.parametrize(
    "func, needle",
    [("backward_raises", "planted failure in backward"), ("jvp_raises", "planted failure in jvp")],
)
def test_derivative_that_raises_exits_3(fns, func, needle):
    """SPEC: exit 3 when 'the user's function, or its derivative, raised'. A ValueError from the
    user's own backward/jvp is a crash, not a check that 'cannot run' (like a missing jvp): it
    must not end as verdict PASS with exit 0."""
    run = jac("check", target(fns, func), "-p", json.dumps(X5), "--format", "json")
    assert run.code == 3, run
    assert needle in run.stderr and "Traceback" not in run.stderr, run


def test_batch_dim_is_refused(fns):
    run = jac("check", target(fns, "custom_sin"), "-p", json.dumps([X5, X5]), "--batch-dim", "0")
    assert run.code == 2, run
    assert "--batch-dim" in run.stderr and run.stdout_bytes == b"", run


def test_seed_changes_directions_not_verdicts(fns):
    _, first = run_check(fns, "sign_backward", [X5], "--seed", "1")
    _, again = run_check(fns, "sign_backward", [X5], "--seed", "1")
    _, other = run_check(fns, "sign_backward", [X5], "--seed", "2")
    assert first == again  # reproducible
    assert verdicts(first) == verdicts(other)
    assert rows_of(first)[ADJOINT]["max_abs_error"] != rows_of(other)[ADJOINT]["max_abs_error"]
