"""jac against torch on PyTorch's own operator database (OpInfo), float64 on the CPU.

For each operator that supports autograd and a few of its sample inputs, the function
``x -> op(x, *args, **kwargs)`` (its floating outputs) goes through jac's library API
(:func:`jaccli.run`) as jvp, vjp, jacfwd, jacrev, hessian and hvp of its sum, under
``--engine func`` and ``--engine autograd`` (the routes ``--engine auto`` chooses from, with
their fallbacks), and through ``jac check``. Each result must equal torch.func's or
torch.autograd's on the same function
(seeded as jac seeds it, so random operators compare too).

Run it all: ``python tests/opinfo_sweep.py`` (prints the counts and every mismatch), or
``pytest -m opinfo tests/test_opinfo.py``. tests/test_opinfo.py runs a fixed sample by default.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from jaccli.autodiff import calls
from jaccli.errors import JacError
from jaccli.pipeline import Request, run, run_check

COMMANDS = ("jvp", "vjp", "jacfwd", "jacrev", "hessian", "hvp")
ENGINES = ("func", "autograd")  # --engine auto picks among these engines' routes
SAMPLES = 2  # sample inputs per operator
MAX_NUMEL = 64  # larger samples make Jacobians and Hessians slow to no purpose
RTOL, ATOL = 1e-6, 1e-8
SEED = 0


def operators() -> list:
    from torch.testing._internal.common_methods_invocations import op_db

    return [op for op in op_db if op.supports_autograd and torch.float64 in op.supported_dtypes("cpu")]


def op_id(op: Any) -> str:
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


@dataclass
class Case:
    op: str
    sample: int
    command: str  # the command, and its engine: "jvp/autograd"
    status: str  # pass, mismatch, error (jac exit 70), refused (jac exit 2/3 where torch works), agree-fail
    detail: str = ""


@dataclass
class Tally:
    cases: list[Case] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"cases": len(self.cases)}
        for c in self.cases:
            out[c.status] = out.get(c.status, 0) + 1
        return out


def samples(op: Any) -> list:
    """Up to SAMPLES samples whose input is one small floating tensor."""
    found = []
    for sample in op.sample_inputs("cpu", torch.float64, requires_grad=False):
        x = sample.input
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float64:
            continue
        if x.layout != torch.strided:  # jac takes dense tensors
            continue
        if x.numel() > MAX_NUMEL and not _tensors_in(sample.args, sample.kwargs):
            # a unary call: a corner of the input, so that Jacobians and Hessians stay small
            x = x[tuple(slice(0, 4) for _ in range(x.dim()))].clone()
            sample = type(sample)(x, args=sample.args, kwargs=sample.kwargs)
        if x.numel() > MAX_NUMEL:
            continue
        found.append(sample)
        if len(found) == SAMPLES:
            break
    return found


def _tensors_in(args: Any, kwargs: Any) -> bool:
    from torch.utils._pytree import tree_leaves

    return any(isinstance(t, torch.Tensor) for t in tree_leaves([list(args), dict(kwargs)]))


def function_of(op: Any, sample: Any) -> Callable[[Any], Any]:
    """x -> the op's floating outputs (a tensor, or a tuple of them); the other arguments fixed."""
    args, kwargs = sample.args, sample.kwargs

    def f(x):
        out = op(x, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            leaves = [out]
        else:
            leaves = list(out) if isinstance(out, (tuple, list)) else []
        kept = [t for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]
        return kept[0] if len(kept) == 1 else tuple(kept)

    return f


def _seeded(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """f on the random stream jac gives it (jaccli.autodiff.calls: --seed 0)."""

    def g(x):
        with calls.seeded(SEED):
            return f(x)

    return g


def _leaves(out: Any) -> list:
    return [out] if isinstance(out, torch.Tensor) else list(out)


def _close(a: Any, b: Any) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b)
    if a.shape != b.shape:
        return False
    b = b.to(torch.float64)
    return bool(torch.allclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True))


def references(command: str, f: Callable, x: Any, v: Any, us: list) -> list[tuple[str, list]]:
    """torch.func's and torch.autograd's answers (engine, list of tensors), those that run."""
    import torch.autograd.functional as AF
    import torch.func as tf

    f = _seeded(f)

    def s(x):
        return sum(t.sum() for t in _leaves(f(x)))

    single = lambda out: out if isinstance(out, tuple) else (out,)  # noqa: E731
    ways: list[tuple[str, Callable[[], list]]] = []
    if command == "jvp":
        ways = [
            ("func", lambda: _leaves(tf.jvp(f, (x,), (v,))[1])),
            ("autograd", lambda: list(single(AF.jvp(f, x, v)[1]))),
        ]
    elif command == "vjp":
        cot = tuple(us) if len(us) > 1 else us[0]
        ways = [
            ("func", lambda: list(tf.vjp(f, x)[1](cot))),
            ("autograd", lambda: [AF.vjp(f, x, cot)[1]]),
        ]
    elif command in ("jacfwd", "jacrev"):
        ways = [
            # --engine func runs the command's own torch.func transform
            ("func" if command == "jacfwd" else "", lambda: _leaves(tf.jacfwd(f, randomness="same")(x))),
            ("func" if command == "jacrev" else "", lambda: _leaves(tf.jacrev(f)(x))),
            ("autograd", lambda: list(single(AF.jacobian(f, x)))),
        ]
    elif command == "hessian":
        ways = [
            ("func", lambda: [tf.hessian(s)(x)]),
            ("", lambda: [tf.jacrev(tf.jacrev(s))(x)]),
            ("autograd", lambda: [AF.hessian(s, x)]),
        ]
    elif command == "hvp":
        ways = [
            ("func", lambda: [tf.jvp(tf.grad(s), (x,), (v,))[1]]),
            ("autograd", lambda: [AF.hvp(s, x, v)[1]]),
            # reverse over reverse gives v^T H: H v wherever torch's Hessian is symmetric
            ("autograd", lambda: [AF.vhp(s, x, v)[1]]),
        ]
    found = []
    for engine, way in ways:
        try:
            found.append((engine, [t.detach() for t in way()]))
        except Exception:
            pass
    return found


def jac_answer(command: str, f: Callable, x: Any, v: Any, us: list, engine: str) -> list:
    s = lambda x: sum(t.sum() for t in _leaves(f(x)))  # noqa: E731
    fn = s if command in ("hessian", "hvp") else f
    request = Request(
        command,
        fn,
        primals=[x],
        tangents=[v] if command in ("jvp", "hvp") else [],
        cotangents=us if command == "vjp" else [],
        repeat=0,
        warmup=0,
        seed=SEED,
        engine=engine,
    )
    results = run(request).results
    key = {
        "jvp": "jvp",
        "vjp": "vjp",
        "jacfwd": "jacobian",
        "jacrev": "jacobian",
        "hessian": "hessian",
        "hvp": "hvp",
    }[command]
    return [torch.from_numpy(a) for k, a in results.items() if k.split(".")[0] == key]


def _disagreement(refs: list) -> str:
    """Where torch's own routes (torch.func, torch.autograd) disagree with each other: say by how much."""
    worst = 0.0
    for other in refs[1:]:
        for a, b in zip(refs[0], other):
            if a.shape == b.shape and a.numel() and not _close(a, b):
                worst = max(worst, float((a.double() - b.double()).abs().nan_to_num(0.0).max()))
    return f"torch's routes disagree by up to {worst:.3g}" if worst else ""


def check_one(op: Any, n: int, sample: Any, command: str, engine: str = "func") -> list[Case]:
    """One case per engine in ``engines``, against the same references."""
    return [_check_one(op, n, sample, command, e) for e in ((engine,) if isinstance(engine, str) else engine)]


def _check_one(op: Any, n: int, sample: Any, command: str, engine: str) -> Case:
    f = function_of(op, sample)
    x = sample.input.detach().clone()
    g = torch.Generator().manual_seed(n)
    v = torch.randn(x.shape, dtype=x.dtype, generator=g)
    try:
        with torch.no_grad():
            out = _seeded(f)(x.clone())
        outs = _leaves(out)
    except Exception as exc:
        return Case(op_id(op), n, f"{command}/{engine}", "agree-fail", f"the op raised: {exc!s:.80}")
    if not outs:
        return Case(op_id(op), n, f"{command}/{engine}", "agree-fail", "no floating output")
    us = [torch.randn(o.shape, dtype=o.dtype, generator=g) for o in outs]
    refs = references(command, f, x.clone(), v, us)
    try:
        got = jac_answer(command, f, x.clone(), v, us, engine)
    except JacError as exc:
        # --engine func gives torch.func's answer, and fails where torch.func fails
        if not [r for e, r in refs if e == engine]:
            return Case(op_id(op), n, f"{command}/{engine}", "agree-fail", str(exc)[:120])
        detail = f"exit {int(exc.exit_code)}: {str(exc)[:160]}"
        return Case(op_id(op), n, f"{command}/{engine}", "refused", detail)
    except Exception as exc:  # an internal error: exit 70 from the CLI
        return Case(op_id(op), n, f"{command}/{engine}", "error", f"{type(exc).__name__}: {str(exc)[:160]}")
    if not refs:
        return Case(op_id(op), n, f"{command}/{engine}", "pass", "jac answers where torch's all fail")
    refs = [r for _, r in refs]
    for ref in refs:
        if len(ref) == len(got) and all(_close(a, b) for a, b in zip(got, ref)):
            return Case(op_id(op), n, f"{command}/{engine}", "pass", _disagreement(refs))
    worst = -1.0
    if refs[0] and len(refs[0]) == len(got):
        for a, b in zip(got, refs[0]):
            if a.shape == b.shape and a.numel():
                worst = max(worst, float((a.double() - b.double()).abs().nan_to_num(1e300).max()))
    return Case(op_id(op), n, f"{command}/{engine}", "mismatch", f"max abs diff vs torch.func {worst:.3g}")


def check_verdict(op: Any, n: int, sample: Any) -> Case:
    """``jac check`` must give a verdict (or a clear refusal), never an internal error."""
    f = function_of(op, sample)
    x = sample.input.detach().clone()
    try:
        run_check(Request("check", f, primals=[x], seed=SEED))
    except JacError as exc:
        return Case(op_id(op), n, "check", "pass", f"exit {int(exc.exit_code)}: {str(exc)[:80]}")
    except Exception as exc:
        return Case(op_id(op), n, "check", "error", f"{type(exc).__name__}: {str(exc)[:160]}")
    return Case(op_id(op), n, "check", "pass")


def sweep(ops: list, commands=COMMANDS, check: bool = True, tally: Tally | None = None) -> Tally:
    import warnings

    tally = tally or Tally()
    warnings.filterwarnings("ignore")
    for op in ops:
        try:
            found = samples(op)
        except Exception:
            continue
        for n, sample in enumerate(found):
            for command in commands:
                tally.cases.extend(check_one(op, n, sample, command, ENGINES))
            if check:
                tally.cases.append(check_verdict(op, n, sample))
    return tally


def main(argv: list[str]) -> int:
    import contextlib
    import io
    import time

    ops = operators()
    if argv:
        ops = [op for op in ops if op_id(op) in argv or op.name in argv]
    tally = Tally()
    start = time.time()
    for i, op in enumerate(ops):
        with contextlib.redirect_stderr(io.StringIO()):
            sweep([op], tally=tally)
        bad = [
            c
            for c in tally.cases
            if c.op == op_id(op) and (c.status in ("mismatch", "error", "refused") or "disagree" in c.detail)
        ]
        for c in bad:
            print(f"{c.status:9} {c.op} sample {c.sample} {c.command}: {c.detail}", flush=True)
        if i % 25 == 0:
            print(f"# {i}/{len(ops)} ops, {time.time() - start:.0f} s, {tally.counts()}", flush=True)
    print("counts:", tally.counts(), f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
