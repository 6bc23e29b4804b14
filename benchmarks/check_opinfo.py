"""``jac check`` over PyTorch's OpInfo database: does check raise, or exit 70, on any operator?

    PYTHONPATH=$PWD python benchmarks/check_opinfo.py [--samples 2] [--ops NAME,NAME] [--order 1]

float64 on the CPU, the first samples of each op that supports float64 and autograd, the sample's
tensors that require grad differentiated (other arguments bound), its differentiable outputs
(output_process_fn_grad) checked, through the library API
(jaccli.run_check). Prints one line per case that is not PASS/FAIL, then the counts.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings


def cases(samples: int, names: set[str] | None):
    import torch
    from torch.testing._internal.common_methods_invocations import op_db

    for op in op_db:
        if names and op.name not in names:
            continue
        if not op.supports_autograd or torch.float64 not in op.supported_dtypes("cpu"):
            continue
        try:
            inputs = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))[:samples]
        except Exception:  # noqa: BLE001 - a broken sample generator is not jac's concern
            continue
        for k, sample in enumerate(inputs):
            yield f"{op.name}{'.' + op.variant_test_name if op.variant_test_name else ''}#{k}", op, sample


def bound(op, sample):
    """(fn, primals): the sample's tensors that require grad are differentiated (as in OpInfo's own
    gradcheck tests, through the op's gradcheck_wrapper), everything else is bound."""
    import torch

    args = [sample.input, *sample.args]
    where = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    fixed = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    kwargs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in sample.kwargs.items()}

    def fn(*tensors):
        call = list(fixed)
        for i, t in zip(where, tensors):
            call[i] = t
        out = sample.output_process_fn_grad(op.gradcheck_wrapper(op.get_op(), *call, **kwargs))
        if isinstance(out, torch.Tensor):
            return out if out.is_floating_point() else out.double()
        picked = [o for o in out if isinstance(o, torch.Tensor) and o.is_floating_point()]
        return tuple(picked)

    return fn, [fixed[i].clone() for i in where]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--ops", default="")
    parser.add_argument("--order", type=int, default=1)
    options = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch

    from jaccli import Request, run_check
    from jaccli.errors import JacError

    counts = collections.Counter()
    start = time.perf_counter()
    names = set(options.ops.split(",")) if options.ops else None
    for name, op, sample in cases(options.samples, names):
        fn, primals = bound(op, sample)
        if not primals or any(p.layout != torch.strided for p in primals):
            counts["skipped: no dense input to differentiate"] += 1
            continue
        request = Request(
            "check", fn, primals=primals, dtype="float64", repeat=1, warmup=0, order=options.order
        )
        try:
            outcome = run_check(request)
            counts["PASS" if outcome.report.passed else "FAIL"] += 1
            if not outcome.report.passed:
                bad = [r.name for r in outcome.report.rows if r.verdict == "FAIL"]
                print(f"FAIL  {name}: {', '.join(bad)}", flush=True)
        except JacError as exc:
            counts[f"exit {int(exc.exit_code)}"] += 1
            print(f"exit {int(exc.exit_code)}  {name}: {str(exc)[:200]}", flush=True)
        except Exception as exc:  # noqa: BLE001 - exit 70: a bug in jac
            counts["exit 70"] += 1
            print(
                f"exit 70  {name}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                flush=True,
            )
    print(f"cases {sum(counts.values())}: {dict(counts)} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
