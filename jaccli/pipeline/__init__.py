"""One command from start to finish: a :class:`Request` in, an :class:`Outcome` out.

This is the library behind the CLI and needs no click::

    >>> from jaccli import Request, run
    >>> outcome = run(Request("jacrev", "examples/mlp.py:model()", primals=["randn:4"]))
    >>> outcome.results["jacobian"].shape
    (2, 4)

A request goes through five stages, each a module taking only what it needs and handing a typed
value to the next, so that bad input fails before anything costly or irreversible:

1. :mod:`~jaccli.pipeline.request`: options and output destinations checked (no torch yet);
2. :mod:`~jaccli.pipeline.problem`: the function loaded, the inputs read and on the device, the
   function's output once (its structure fixes the cotangents and the result keys);
3. :mod:`~jaccli.pipeline.plan`: routes, mode, keys, memory (at once, chunked, streamed);
4. :mod:`~jaccli.pipeline.compute`: the first call, the steady-state runs, the function alone;
5. :mod:`~jaccli.pipeline.delivery`: host arrays under the contract's keys, then files or text.

``jac check`` (:mod:`~jaccli.pipeline.check`), ``--sparse`` (:mod:`jaccli.sparse.command`),
``--directions`` and ``jac spectrum`` (:mod:`jaccli.linalg`) reuse the first two stages and
the last, with a plan and a computation of their own.
"""

from __future__ import annotations

import contextlib
import sys
from typing import BinaryIO

from jaccli.errors import InputError
from jaccli.io.streams import UserStdout
from jaccli.pipeline.check import deliver_check, run_check
from jaccli.pipeline.delivery import deliver
from jaccli.pipeline.request import CheckOutcome, Outcome, Request, check_request, output_format

__all__ = [
    "CheckOutcome",
    "Outcome",
    "Request",
    "check_request",
    "deliver",
    "deliver_check",
    "output_format",
    "run",
    "run_check",
]


def run(request: Request, stdout: BinaryIO | None = None) -> Outcome:
    """Compute what ``request`` asks; nothing is written (see :func:`deliver`)."""
    check_request(request, stdout)
    from jaccli.scale import distributed

    if distributed.launched() and request.command not in ("jacfwd", "jacrev", "jacobian"):
        raise InputError(
            f"jac {request.command} does not run under torchrun; torchrun shards jacfwd, jacrev and "
            "jacobian written with -o J.npy"
        )
    # The user's code may print: keep standard output for results alone.
    with contextlib.redirect_stdout(UserStdout(sys.stderr)):
        if request.sparse or request.sparsity:
            from jaccli.sparse.command import run_sparse

            return run_sparse(request)
        if request.n_directions is not None:  # many tangents or cotangents at once
            from jaccli.linalg.directions import run_directions

            return run_directions(request)
        return _derivative(request)


def _derivative(request: Request) -> Outcome:
    """The derivative commands, stage by stage."""
    from jaccli.autodiff.transforms import COMMANDS
    from jaccli.pipeline import compute, delivery, plan, problem

    loaded = problem.evaluate(request, problem.load(request, COMMANDS))
    planned = plan.make(request, loaded)
    result = compute.compute(request, loaded, planned)
    return delivery.to_host(request, loaded, planned, result)
