"""``--compile``: the chosen transform traced once into one graph and compiled by TorchInductor.

jac calls the transform with the very same tensors on every steady-state run, which is what
``jax.jit`` exploits: trace once, compile once, then call the compiled code with no checks.
``torch.compile`` of the transform cannot assume that, and its per-call machinery (Dynamo's
guards, AOTAutograd's runtime wrappers) costs more than the kernels on small problems:
measured side by side on rosenbrock(1000) jvp, ``torch.compile(fullgraph=True,
dynamic=False)`` took 84 us a call, the same graph called without Dynamo 15 us, and
Inductor's compiled graph called directly 8.7 us (eager torch.func: about 1 ms; numbers from
a loaded 2-core machine, see benchmarks/bench_compile.py). So this module:

1. traces the route the first call chose (:meth:`Router.run_chosen`) with ``make_fx``,
   functionalized (in-place writes become copies) and with Inductor's decompositions, to an
   aten graph whose inputs are the primals, tangents and cotangents;
2. compiles that graph with Inductor (C++ on the CPU, Triton on CUDA);
3. calls it once and checks its results against the uncompiled first call's.

Any failure on the way (no C++ compiler, an operator Inductor cannot lower, a function that
cannot be traced, results that differ, as a function drawing random numbers gives) falls
back to the uncompiled route with one note, and the numbers are the uncompiled ones.

Inductor caches compiled kernels on disk (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_<user>``), so a second ``jac --compile`` of the same function compiles
faster; jac sets no cache or compiler option of its own.
"""

from __future__ import annotations

from typing import Any, Callable

from jaccli import trees
from jaccli.errors import describe
from jaccli.timing import Timings

PHASE = "compile"
LABEL = "compiled by TorchInductor"

# How close the compiled results must be to the uncompiled ones, by dtype: Inductor fuses and
# reorders arithmetic, so only rounding may differ; a gross difference (random draws, a branch
# taken differently) sends the command back to the uncompiled route.
_RTOL = {"float64": 1e-7, "float32": 1e-3, "float16": 1e-2, "bfloat16": 5e-2}


def compile_router(router: Any, tree: dict[str, Any], timings: Timings) -> tuple[Callable[[], Any], Any, str]:
    """Compile the route ``router`` chose, timed as the "compile" phase.

    Returns the steady-state callable, the results tree (the compiled call's), and the engine
    label for the footer; on failure the router itself, ``tree`` and its label, with a note.
    """
    import warnings

    with timings.phase(PHASE), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Inductor's own deprecation warnings; the function already ran
        try:
            call = _compile(router)
            compiled_tree = call()
            problem = _difference(compiled_tree, tree)
        except Exception as exc:  # any failure to trace or compile: run uncompiled, and say why
            problem = _first_sentence(describe(exc))
    if problem is not None:
        timings.notes.append(f"could not be compiled ({problem}); ran uncompiled")
        return router, tree, router.label
    return call, compiled_tree, f"{router.label}, {LABEL}"


def _compile(router: Any) -> Callable[[], Any]:
    """The compiled transform, called with the request's own tensors."""
    import torch
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils._pytree import tree_flatten, tree_unflatten

    # Every tensor the transform reads becomes a graph input, so none is baked in as a constant.
    extra = {k: router.options[k] for k in ("tangents", "cotangents") if router.options.get(k) is not None}
    inputs, in_spec = tree_flatten((list(router.primals), extra))
    out_specs = []

    def flat(*leaves: Any) -> list[Any]:
        primals, given = tree_unflatten(list(leaves), in_spec)
        results, spec = tree_flatten(router.run_chosen(primals, {**router.options, **given}))
        out_specs.append(spec)
        return results

    functional = torch.func.functionalize(flat, remove="mutations_and_views")
    graph = make_fx(functional, decomposition_table=select_decomp_table())(*inputs)
    _drop_dead_code(graph)
    compiled = compile_fx_inner(graph, inputs, is_inference=True)
    out_spec = out_specs[-1]

    def call() -> Any:
        return tree_unflatten(list(compiled(list(inputs))), out_spec)  # it empties the list it gets

    return call


def _first_sentence(text: str, limit: int = 160) -> str:
    """Torch's compile errors run to paragraphs: the note keeps their first sentence."""
    for end in (". ", "! "):
        if end in text:
            text = text[: text.index(end) + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _drop_dead_code(graph: Any) -> None:
    """Remove unused nodes, including the shape checks torch.func leaves in a traced graph
    (``aten.is_same_size`` and friends return bools, which Inductor cannot lower)."""
    import torch

    for node in reversed(list(graph.graph.nodes)):
        if node.op == "call_function" and not node.users and not isinstance(node.meta.get("val"), torch.Tensor):
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def _difference(got: Any, want: Any) -> str | None:
    """Why the compiled results are not the uncompiled ones (None when they agree)."""
    import torch

    got_leaves, want_leaves = dict(trees.leaves(got)), dict(trees.leaves(want))
    if list(got_leaves) != list(want_leaves):
        return f"the compiled transform gave keys {list(got_leaves)}, not {list(want_leaves)}"
    for key, expected in want_leaves.items():
        value = got_leaves[key]
        if not isinstance(expected, torch.Tensor):
            if value != expected:
                return f"{key} is {value!r} compiled, {expected!r} uncompiled"
            continue
        if value.shape != expected.shape or value.dtype != expected.dtype:
            return f"{key} has shape {tuple(value.shape)} {value.dtype} compiled, {tuple(expected.shape)} {expected.dtype} uncompiled"
        rtol = _RTOL.get(str(expected.dtype).replace("torch.", ""), 1e-3)
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
        if not torch.allclose(value, expected, rtol=rtol, atol=rtol * scale, equal_nan=True):
            worst = float((value - expected).abs().max())
            return f"{key} differs from the uncompiled result by up to {worst:.3g} (does the function draw random numbers?)"
    return None
