"""The memory plan's count of a pass against what the passes really hold.

``sin(x).outer(x)`` is the case that was OOM-killed at ``-p randn:300``: each reverse pass of
jacrev holds its one-hot cotangent and two output-sized products (the outer product's
derivative), more than the plan's count of ``2 x (inputs + outputs)`` per pass, so chunks sized
by that count overran the memory allowed. The plan now measures one pass of such a function;
here every tensor alive during a run is added up (the same dispatch mode, around the whole run)
and must stay within ``--max-memory``, and the Jacobian must equal torch.func's.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import jac, write_module

from jaccli import Request, run
from jaccli.scale import memory

SOURCE = """
import torch

def outer(x):  # R^n -> R^(n, n)
    return torch.sin(x).outer(x)

class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("no backward here")

def no_backward(x):
    return NoBackward.apply(x)
"""

N = 40
LIMIT = 20_000_000  # bytes; computing the (1600, 40) float64 Jacobian at once holds about 60 MB


def outer(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x).outer(x)


@pytest.fixture
def mod(workdir):
    write_module(workdir, "planmod", SOURCE)
    np.save("x.npy", np.random.default_rng(0).standard_normal(N))
    import importlib

    return importlib.import_module("planmod")


def _watched(command: str, **options) -> tuple[int, object]:
    """The most bytes of tensors alive at once during the run, and its outcome."""
    request = Request(command, "planmod:outer", primals=["x.npy"], dtype="float64", repeat=0, **options)
    with memory._Watch() as watch:
        outcome = run(request)
    return watch.peak, outcome


def _x() -> torch.Tensor:
    return torch.tensor(np.load("x.npy"))


def test_jacrev_of_an_outer_product_is_chunked_within_the_limit_and_equals_torch_func(mod):
    peak, outcome = _watched("jacrev", max_memory=LIMIT)
    note = outcome.timings.footer["memory"]
    assert "computed in chunks of" in note and "(measured)" in note, note
    assert peak <= LIMIT, (peak, note)
    np.testing.assert_array_equal(outcome.results["jacobian"], torch.func.jacrev(outer)(_x()).numpy())


def test_chunks_sized_by_the_old_count_would_not_have_fit(mod):
    itemsize, n_out = 8, N * N
    result = n_out * N * itemsize
    old_chunk = (LIMIT - result) // (2 * itemsize * (N + n_out))  # what the plan chose before
    peak, outcome = _watched("jacrev", max_memory=LIMIT, chunk_size=old_chunk)
    assert f"chunks of {old_chunk} rows" in outcome.timings.footer["memory"]
    assert peak > LIMIT  # the overrun the measurement prevents


def test_jacfwd_chunks_by_a_measured_forward_pass_and_equals_torch_func(mod):
    limit = 1_200_000  # the result alone takes 512 kB
    peak, outcome = _watched("jacfwd", max_memory=limit)
    note = outcome.timings.footer["memory"]
    assert "computed in chunks of" in note and "columns" in note, note
    assert peak <= limit, (peak, note)
    np.testing.assert_array_equal(outcome.results["jacobian"], torch.func.jacfwd(outer)(_x()).numpy())


def test_a_streamed_jacobian_holds_no_more_than_the_limit(mod):
    limit = 300_000  # less than the 512 kB result: streamed into J.npy
    peak, outcome = _watched("jacrev", max_memory=limit, out="J.npy")
    assert outcome.streamed is not None
    assert peak <= limit, peak
    outcome_file = np.load("J.npy")  # written while computed: run() alone leaves it in place
    np.testing.assert_array_equal(outcome_file, torch.func.jacrev(outer)(_x()).numpy())


def test_the_command_line_says_it_chunked_and_writes_torch_funcs_jacobian(mod):
    run_ = jac(
        "jacrev", "planmod:outer", "-p", "x.npy", "--dtype", "float64", "--max-memory", "20M", "-o", "J.npy"
    )
    assert run_.code == 0, run_
    assert re.search(r"memory: computed in chunks of \d+ rows .*\(measured\)", run_.stderr), run_
    np.testing.assert_array_equal(np.load("J.npy"), torch.func.jacrev(outer)(_x()).numpy())


def test_a_pass_of_an_outer_product_holds_two_output_sized_products():
    x = torch.randn(30, dtype=torch.float64)
    found = memory.measure_pass(outer, [x], 0, False, "rev")
    output = 30 * 30 * 8
    assert found.once >= output  # the output, held by the graph
    assert found.per_pass >= 2 * output
    forward = memory.measure_pass(outer, [x], 0, False, "fwd")
    assert forward.per_pass >= 2 * output  # the two products in the tangent of the outer product


def test_a_function_that_cannot_be_measured_keeps_the_count(mod):
    assert memory.measure_pass(mod.no_backward, [torch.ones(3)], 0, False, "rev") is None


def test_a_quick_first_call_is_not_measured_and_a_measurement_is_made_once(monkeypatch):
    made = []
    monkeypatch.setattr(memory, "measure_pass", lambda *a: made.append(a) or memory.Pass(10, 20))
    quick = memory.Probe(outer, [torch.ones(3)], 0, False, call_s=1e-9)
    assert quick.measure("rev", passes=9, room=10**6) is None  # 9 passes of at most 800 bytes each fit
    # a slow call (1 s) may have written 200 GB, but it cannot have held more than this process
    # ever has: with room for 2 passes of 4 x that, nothing is measured
    room = 2 * memory.PASS_OVER_CALL * memory.peak_so_far("cpu")
    assert memory.Probe(outer, [torch.ones(3)], 0, False, call_s=1.0).measure("rev", 2, room) is None
    assert made == []
    slow = memory.Probe(outer, [torch.ones(3)], 0, False, call_s=1.0)
    first = slow.measure("rev", passes=9, room=10**6)
    assert first == memory.Pass(10, int(20 * memory.MEASURED_MARGIN))
    assert slow.measure("rev", passes=9, room=10**6) is first
    assert len(made) == 1


@pytest.mark.cuda
def test_on_cuda_the_allocators_peak_stays_within_the_limit(mod):
    """The same plan against CUDA's caching allocator, which rounds each block up to 512 bytes."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    peak, outcome = _watched("jacrev", max_memory=LIMIT, device="cuda")
    torch.cuda.synchronize()
    assert "computed in chunks of" in outcome.timings.footer["memory"]
    assert peak <= LIMIT
    assert torch.cuda.max_memory_allocated() - base <= 1.1 * LIMIT
    want = torch.func.jacrev(outer)(_x()).numpy()
    np.testing.assert_allclose(outcome.results["jacobian"], want, rtol=1e-12, atol=1e-14)
