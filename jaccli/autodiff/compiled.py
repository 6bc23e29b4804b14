"""``--compile``: the chosen transform traced once into one graph and compiled by TorchInductor.

jac calls the transform with the very same tensors on every steady-state run, which is what
``jax.jit`` exploits: trace once, compile once, then call the compiled code with no checks.
``torch.compile`` of the transform cannot assume that, and its per-call machinery (Dynamo's
guards, AOTAutograd's runtime wrappers) costs more than the kernels on small problems:
measured side by side on rosenbrock(1000) jvp, ``torch.compile(fullgraph=True,
dynamic=False)`` took 84 us a call, the same graph through ``torch._inductor.compile`` (no
Dynamo) 15 us, and Inductor's compiled graph called directly 8.7 us (eager torch.func: about
1 ms; a loaded 2-core machine; benchmarks/bench_compile.py compares with JAX). So this module:

1. traces the route the first call chose (:meth:`Router.run_chosen`) with ``make_fx``,
   functionalized (in-place writes become copies; views stay views, which Inductor fuses,
   where view copies would each cost an operator call) and with Inductor's decompositions,
   to an aten graph whose inputs are the primals, tangents and cotangents;
2. folds away the zero tangents forward mode gives what it does not differentiate
   (:func:`drop_zero_terms`) and compiles the graph with Inductor's ``compile_fx_inner``
   (C++ on the CPU, Triton on CUDA);
3. calls it once through Inductor's wrapper, checks the results against the uncompiled
   first call's, and from then on calls the generated code directly, rebuilding the result
   tree with a function built once (``torch.no_grad`` and a pytree walk per call had cost
   more than the kernels).

Any failure on the way (no C++ compiler, an operator Inductor cannot lower such as a random
draw, a function that cannot be traced, results that differ, a torch whose private Inductor
API has moved) falls back to the uncompiled route with one note; the numbers are then the
uncompiled ones.

Inductor caches compiled kernels on disk (``TORCHINDUCTOR_CACHE_DIR``, by default
``/tmp/torchinductor_<user>``), so a second ``jac --compile`` of the same function compiles
faster; jac sets no cache or compiler option of its own.
"""

from __future__ import annotations

from typing import Any, Callable

from jaccli import trees
from jaccli.errors import describe
from jaccli.report.timing import Timings

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
            problem = difference(compiled_tree, tree)
        except Exception as exc:  # any failure to trace or compile: run uncompiled, and say why
            problem = first_sentence(describe(exc))
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

    # Every tensor the transform reads becomes a graph input, so none is baked in as a constant;
    # detached, because the graph computes the derivatives itself (see detach_constants).
    extra = {k: router.options[k] for k in ("tangents", "cotangents") if router.options.get(k) is not None}
    leaves, in_spec = tree_flatten((list(router.primals), extra))
    inputs = [leaf.detach() for leaf in leaves]
    structure = []

    def flat(*args: Any) -> list[Any]:
        primals, given = tree_unflatten(list(args), in_spec)
        tree = router.run_chosen(primals, {**router.options, **given})
        structure.append(tree)
        return [leaf for _, leaf in trees.leaves(tree)]

    functional = torch.func.functionalize(flat, remove="mutations")  # views stay: Inductor fuses them
    graph = make_fx(functional, decomposition_table=select_decomp_table())(*inputs)
    drop_zero_terms(graph)
    drop_dead_code(graph)
    detach_constants(graph)
    compiled = compile_fx_inner(graph, inputs, is_inference=True)
    rebuild = trees.rebuilder(structure[-1])
    run_graph = getattr(compiled, "current_callable", None) or compiled
    first = True

    def call() -> Any:
        nonlocal first
        if first:  # the wrapper's first call finishes Inductor's bookkeeping (its autotune cache)
            first = False
            return rebuild(compiled(list(inputs)))  # it empties the list it is given
        # Later calls go straight to the generated code: the wrapper only adds debug hooks.
        return rebuild(run_graph(list(inputs)))

    return call


def _zero_ops() -> tuple[set, set, set]:
    """aten ops by how a zero operand passes through them (see :func:`drop_zero_terms`)."""
    import torch

    aten, prims = torch.ops.aten, torch.ops.prims
    sources = {aten.full.default, aten.zeros.default, aten._efficientzerotensor.default}
    # zero in the first operand gives a zero result
    keeping = {
        aten.expand.default, aten.view.default, aten.reshape.default, aten.permute.default,
        aten.t.default, aten.transpose.int, aten.alias.default, aten.clone.default,
        aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default, aten.slice.Tensor,
        aten.select.int, aten.neg.default, aten._to_copy.default, prims.convert_element_type.default,
        aten.sum.default, aten.sum.dim_IntList, aten.div.Tensor,
    }  # fmt: skip
    products = {aten.mm.default, aten.bmm.default, aten.mv.default, aten.mul.Tensor}  # zero in any
    return sources, keeping, products


def drop_zero_terms(graph: Any) -> None:
    """Fold away the zeros forward mode traces for tensors it does not differentiate.

    Eager forward mode gives a module's weights "efficient zero" tangents and skips the
    arithmetic on them (x @ 0, y + 0); a traced graph holds them as real zeros and real
    matmuls, which made a compiled MLP jvp twice as slow as the uncompiled one. A product with
    a zero is a zero, and adding a zero is the other operand, as eager torch treats them.
    """
    import torch

    sources, keeping, products = _zero_ops()
    add, sub = torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor
    zeros: set = set()

    def zero(node: Any) -> bool:
        return isinstance(node, torch.fx.Node) and node in zeros

    for node in list(graph.graph.nodes):
        if node.op != "call_function":
            continue
        value = node.meta.get("val")
        args, target = node.args, node.target
        if target in sources:
            if target is not torch.ops.aten.full.default or args[1] == 0:
                zeros.add(node)
            continue
        if not isinstance(value, torch.Tensor):
            continue
        if (target in keeping and zero(args[0])) or (target in products and any(map(zero, args))):
            with graph.graph.inserting_before(node):
                filled = graph.graph.call_function(
                    torch.ops.aten.full.default,
                    (list(value.shape), 0),
                    {"dtype": value.dtype, "device": value.device},
                )
            filled.meta["val"] = value
            node.replace_all_uses_with(filled)
            zeros.add(filled)
        elif target in (add, sub) and len(args) == 2 and not node.kwargs and zero(args[1]):
            _replace_if_same(node, args[0], value)
        elif target is add and len(args) == 2 and not node.kwargs and zero(args[0]):
            _replace_if_same(node, args[1], value)


def _replace_if_same(node: Any, other: Any, value: Any) -> None:
    """``node`` (x + 0) becomes ``other`` (x) where that changes neither shape nor dtype."""
    import torch

    kept = other.meta.get("val") if isinstance(other, torch.fx.Node) else None
    if isinstance(kept, torch.Tensor) and kept.shape == value.shape and kept.dtype == value.dtype:
        node.replace_all_uses_with(other)


def detach_constants(graph: Any) -> None:
    """A module's parameters enter the traced graph as constants that still require grad;
    nothing records autograd history in the compiled graph, and Inductor's out= kernels
    refuse such tensors, so they become plain buffers."""
    import torch

    for node in graph.graph.nodes:
        if node.op == "get_attr":
            value = getattr(graph, node.target)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                delattr(graph, node.target)
                graph.register_buffer(node.target, value.detach())


def first_sentence(text: str, limit: int = 160) -> str:
    """Torch's compile errors run to paragraphs: the note keeps their first sentence."""
    for end in (". ", "! "):
        if end in text:
            text = text[: text.index(end) + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def drop_dead_code(graph: Any) -> None:
    """Remove unused nodes, including the shape checks torch.func leaves in a traced graph
    (``aten.is_same_size`` and friends return bools, which Inductor cannot lower)."""
    import torch

    for node in reversed(list(graph.graph.nodes)):
        if (
            node.op == "call_function"
            and not node.users
            and not isinstance(node.meta.get("val"), torch.Tensor)
        ):
            graph.graph.erase_node(node)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def difference(got: Any, want: Any) -> str | None:
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
            got, want = (f"{tuple(t.shape)} {t.dtype}" for t in (value, expected))
            return f"{key} is {got} compiled, {want} uncompiled"
        rtol = _RTOL.get(str(expected.dtype).replace("torch.", ""), 1e-3)
        scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
        if not torch.allclose(value, expected, rtol=rtol, atol=rtol * scale, equal_nan=True):
            worst = float((value - expected).abs().max())
            return (
                f"{key} differs from the uncompiled result by up to {worst:.3g} "
                "(does the function draw random numbers?)"
            )
    return None
