"""``jac check`` on the custom layers people write (tests/layers_corpus.py), against
torch.autograd.gradcheck and gradgradcheck; and the cases where ``jac check`` used to pass what it
had not checked, crash, or ask for a full parameter Jacobian (issue 10).

Every wrong layer must FAIL (exit 1) with the row that sees its bug among the failing rows; every
right one PASS (exit 0) with at least one check actually run. jac's verdict is compared with
gradcheck's (first order) and gradgradcheck's (``--order 2``): they must agree, except where jac
sees more, which is asserted case by case.
"""

from __future__ import annotations

import json

import layers_corpus as corpus
import pytest
from conftest import jac, write_module

from jaccli.checking.rows import (
    BATCHED_F,
    FD_FORWARD,
    FD_REVERSE,
    FWD_VS_REV,
    REPEATABLE,
    SECOND_FD_ROR,
    SECOND_SYMMETRY,
    TAYLOR,
)

# gradcheck with its defaults cannot see these bugs (jac can): a wrong jvp (gradcheck checks
# forward mode only with check_forward_ad=True) and a wrong vmap rule (not even
# check_batched_grad=True runs the forward's vmap rule)
JAC_SEES_MORE = {"exp_jvp", "vmap_rule"}


def check(args: list[str]) -> tuple[int, dict]:
    run = jac(*args)
    assert run.code in (0, 1), run
    return run.code, json.loads(run.stdout)


def failing(doc: dict) -> set[str]:
    return {row["check"] for row in doc["checks"] if row["verdict"] == "FAIL"}


def ran(doc: dict) -> set[str]:
    return {row["check"] for row in doc["checks"] if row["verdict"] == "PASS" and row["check"] != REPEATABLE}


def test_corpus_is_big_enough():
    assert len(corpus.CASES) >= 12
    styles = {case.style for case in corpus.CASES}
    assert styles == {"classic", "new", "module"}
    assert any(case.params for case in corpus.CASES) and any(case.order == 2 for case in corpus.CASES)


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
def test_wrong_layer_fails_with_its_row(case):
    code, doc = check(case.args("wrong"))
    assert code == 1 and doc["verdict"] == "FAIL", doc
    assert set(case.fails) <= failing(doc), (case.fails, failing(doc))
    for row in doc["checks"]:
        if row["verdict"] == "FAIL":
            assert row["detail"], row


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
def test_right_layer_passes_with_checks_run(case):
    code, doc = check(case.args("right"))
    assert code == 0 and doc["verdict"] == "PASS", doc
    assert not failing(doc), doc
    assert FD_REVERSE in ran(doc) and TAYLOR in ran(doc), doc  # at least these ran, on every style
    if case.order == 2:
        assert SECOND_FD_ROR in ran(doc) and SECOND_SYMMETRY in ran(doc), doc


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
@pytest.mark.parametrize("version", ["wrong", "right"])
def test_agrees_with_gradcheck(case, version):
    torch_says = corpus.gradchecks(case, version)
    first = [a for a in case.args(version) if a not in ("--order", "2")]
    code1, _ = check(first)
    if case.name in JAC_SEES_MORE and version == "wrong":
        assert torch_says["gradcheck"] is True and code1 == 1  # jac sees more than gradcheck
    else:
        assert (code1 == 0) == torch_says["gradcheck"], (code1, torch_says)
    if case.order == 2:
        code2, _ = check(case.args(version))
        assert (code2 == 0) == (torch_says["gradcheck"] and torch_says["gradgradcheck"]), (code2, torch_says)
        if version == "wrong":  # right to first order: only the second-order rows see it
            assert code1 == 0 and torch_says["gradcheck"] and not torch_says["gradgradcheck"]


def test_wrong_jvp_is_what_gradcheck_forward_ad_sees():
    from torch.autograd import gradcheck

    case = next(c for c in corpus.CASES if c.name == "exp_jvp")
    x = corpus.inputs(case).requires_grad_(True)
    assert not gradcheck(case.callable("wrong"), (x,), check_forward_ad=True, raise_exception=False)
    assert gradcheck(case.callable("right"), (x,), check_forward_ad=True, raise_exception=False)
    _, doc = check(case.args("wrong"))
    assert FD_FORWARD in failing(doc) and FD_REVERSE not in failing(doc), doc


def test_wrong_vmap_rule_only_batched_rows_fail():
    case = next(c for c in corpus.CASES if c.name == "vmap_rule")
    _, doc = check(case.args("wrong"))
    assert BATCHED_F in failing(doc), doc
    assert all(name.startswith("batched") for name in failing(doc)), doc


def test_batch_bug_hides_with_one_row():
    case = next(c for c in corpus.CASES if c.name == "batch")
    args = case.args("wrong")
    args[args.index("randn:4,3")] = "randn:1,3"
    code, doc = check(args)
    assert code == 0, doc  # right for one row: the bug needs a batch of more than one


# ---- issue 10: never PASS what was not checked; no crash where FAIL is the answer ---------------

SOURCE = '''
import numpy as np
import torch
from torch import nn
from torch.autograd import Function


class Opaque(Function):
    """Neither forward mode nor a backward: nothing can differentiate it."""

    @staticmethod
    def forward(ctx, x):
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        raise NotImplementedError("no backward here")


def opaque(x):
    return Opaque.apply(x)


def empty(x):
    return x[:0] * 2


def through_numpy(x):
    return torch.from_numpy(np.sin(x.detach().numpy()))


class NumpyLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def forward(self, x):
        return torch.from_numpy(np.sin((x * self.w).detach().numpy())) + 0 * self.w


def numpy_layer():
    return NumpyLayer()


def dropout_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2))
    return model.train()


_CALLS = [0]


def jittery(x):  # a different value on every call, on every machine
    _CALLS[0] += 1
    return x.sin() + 1e-12 * _CALLS[0]


def linear(x):
    return 3 * x + 1


def wrong_scale():
    return WrongScale()


class ScaleFn(Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, g):
        return 3 * g


class WrongScale(nn.Module):
    def forward(self, x):
        return ScaleFn.apply(x).sin()


def convnet():
    torch.manual_seed(0)
    layers = []
    width = [3, 64, 128, 256, 256, 256, 512]
    for a, b in zip(width, width[1:]):
        layers += [nn.Conv2d(a, b, 3, stride=2 if b in (128, 512) else 1, padding=1), nn.Tanh()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 10))
'''


@pytest.fixture(scope="module")
def fns(tmp_path_factory):
    folder = tmp_path_factory.mktemp("issue10")
    return write_module(folder, "issue10fns", SOURCE)


def test_no_check_could_run_is_exit_2(fns):
    run = jac("check", f"{fns}:opaque", "-p", "randn:3", "--no-timings")
    assert run.code == 2, run
    assert "no check could run" in run.stderr and run.stdout == "", run
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr, run


def test_zero_size_output_is_a_clear_error(fns):
    run = jac("check", f"{fns}:empty", "-p", "randn:3", "--no-timings")
    assert run.code == 2 and "no elements" in run.stderr and "Traceback" not in run.stderr, run


@pytest.mark.parametrize("extra", [(), ("--format", "json")])
def test_numpy_round_trip_fails(fns, extra):
    run = jac("check", f"{fns}:through_numpy", "-p", "randn:4", "--no-timings", *extra)
    assert run.code == 1, run
    assert "Traceback" not in run.stderr, run


def test_numpy_round_trip_wrt_params_fails(fns):
    code, doc = check(
        ["check", f"{fns}:numpy_layer()", "-p", "randn:3", "--wrt", "params", "--format", "json"]
    )
    assert code == 1 and FD_REVERSE in failing(doc), doc


def test_classic_function_in_a_module_wrt_inputs(fns):
    code, doc = check(["check", f"{fns}:wrong_scale()", "-p", "randn:3", "--format", "json"])
    assert code == 1 and FD_REVERSE in failing(doc), doc


@pytest.mark.parametrize("order", ["1", "2"])
def test_dropout_in_train_mode_gets_a_verdict(fns, order):
    args = ["check", f"{fns}:dropout_model()", "-p", "randn:4", "--format", "json", "--order", order]
    code, doc = check(args)
    assert code == 0 and doc["verdict"] == "PASS", doc
    rows = {row["check"]: row for row in doc["checks"]}
    assert rows[BATCHED_F]["verdict"] == "PASS" and rows[REPEATABLE]["verdict"] == "PASS", doc
    code, doc = check(args[:-2] + ["--wrt", "params"])
    assert code == 0, doc


def test_nondeterminism_is_reported(fns):
    code, doc = check(["check", f"{fns}:jittery", "-p", "randn:4", "--format", "json"])
    rows = {row["check"]: row for row in doc["checks"]}
    assert code == 1 and rows[REPEATABLE]["verdict"] == "FAIL", doc
    assert "nondeterministic" in rows[REPEATABLE]["detail"], doc
    code, doc = check(
        ["check", f"{fns}:jittery", "-p", "randn:4", "--format", "json", "--nondet-tol", "1e-9"]
    )
    assert code == 0, doc


def test_taylor_slope_in_json(fns):
    case = next(c for c in corpus.CASES if c.name == "product_classic")  # J.v by reverse mode
    _, right = check(case.args("right"))
    _, wrong = check(case.args("wrong"))
    slope = {
        d["verdict"]: next(r for r in d["checks"] if r["check"] == TAYLOR)["slope"] for d in (right, wrong)
    }
    assert 1.8 <= slope["PASS"] <= 2.3, right
    assert 0.8 <= slope["FAIL"] <= 1.2, wrong  # r(h) ~ h: a wrong J.v
    _, linear = check(["check", f"{fns}:linear", "-p", "randn:3", "--format", "json"])
    row = next(r for r in linear["checks"] if r["check"] == TAYLOR)
    assert row["verdict"] == "PASS" and row["slope"] is None and "rounding level" in row["detail"], row


def test_order_2_costs_are_in_help():
    run = jac("check", "--help")
    text = " ".join(run.stdout.split())
    assert "--order" in text and "Hessian-vector products" in text and "--nondet-tol" in text, text


def test_params_of_a_3m_parameter_convnet_by_directions(fns):
    code, doc = check(
        [
            "check",
            f"{fns}:convnet()",
            "-p",
            "randn:1,3,8,8",
            "--wrt",
            "params",
            "--format",
            "json",
            "--directions",
            "2",
        ]
    )
    assert code == 0 and doc["verdict"] == "PASS", doc
    rows = {row["check"]: row for row in doc["checks"]}
    assert rows[FWD_VS_REV]["verdict"] == "SKIPPED" and "--wrt params" in rows[FWD_VS_REV]["detail"], doc
    assert rows[FD_REVERSE]["verdict"] == "PASS" and rows[FD_FORWARD]["verdict"] == "PASS", doc
    run = jac(
        "check",
        f"{fns}:convnet()",
        "-p",
        "randn:1,3,8,8",
        "--wrt",
        "params",
        "--full",
        "--max-memory",
        "100MB",
    )
    assert run.code == 2 and "--full" in run.stderr and "Traceback" not in run.stderr, run
