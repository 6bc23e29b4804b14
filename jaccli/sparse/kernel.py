"""The steady state of ``--sparse``: the compressed products traced once into one flat graph.

Eager ``vmap`` of ``jvp`` (or ``vjp``, or forward-over-reverse) pays functorch's dispatch on
every operator of every call: at n = 4,096 on the 5-point stencil that bookkeeping is ten
times the arithmetic. After the first call this module traces the whole computation (the
products for every colour and the gather of the stored entries into the CSR ``data`` array)
with ``make_fx`` into a graph of plain aten ops on the batched tensors, and then:

1. folds constants: every node that depends on no primal (the seed matrix, the tangents pushed
   through the linear part of the function, the index tensors that ``roll`` or ``pad`` build,
   and ``ones_like(f(x))``, the seed of a gradient, whose value needs only f(x)'s shape, so
   that a Hessian's graph no longer computes f(x)) is computed once and stored in the graph,
   so that a run does only the work that depends on the primals (:func:`fold_constants`,
   within a memory cap);
2. drops what the trace leaves that does nothing once there are no mutations (``alias``, a
   ``cat`` of one tensor, a ``clone`` of a contiguous intermediate);
3. for the eager graph, collapses chains of views and writes a pointwise op into an operand
   that nothing reads afterwards (``a * b + c`` allocates one buffer, not two): on the
   stencil these took a fifth off a run, bit for bit the same values;
4. checks, on the first call's primals, that the graph gives the eager values (bit for bit,
   or within a few units in the last place where make_fx splits a composite op into its
   parts); if not, or if tracing fails, the steady state stays eager and a note says why;
5. runs the graph as straight-line Python calling each aten op's C++ entry point directly
   (:func:`direct`): FX's own code looks up ``torch.ops.aten.<op>.<overload>`` and goes through
   the overload's Python ``__call__`` on every op of every run, 16% of the stencil's run;
6. runs the traced graph on one thread when that is faster, timed on a few runs (the ops of a
   small graph are too small to split, and a parallel op on a busy machine waits for a core:
   medians 100x the mins were seen on a shared 2-core VM); the same for the compiled graph,
   whose OpenMP loops take torch's thread count when they run;
7. with ``--compile``, traces again with Inductor's decompositions and compiles the graph with
   TorchInductor (as :mod:`jaccli.autodiff.compiled` does for the dense routes; compiling ``vmap(jvp)``
   itself failed on a stride assertion, the flattened aten graph compiles), checked against
   the eager values within rounding.

The written values are the eager first call's, in every case; the kernels are what the
steady-state runs time.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

TRACED = "traced to one aten graph (make_fx), constants folded"


def trace(
    compute: Callable[..., Any],
    primals: Sequence[Any],
    want: Any,
    compile: bool = False,
    fold_cap: int | None = None,
) -> tuple[Callable[[], Any] | None, str | None, str]:
    """(kernel, why not, label): a zero-argument callable giving ``compute(*primals)`` again.

    ``want`` is the eager result it must reproduce. On any failure the kernel is None and the
    second item says why, in one sentence.
    """
    import warnings

    import torch

    from jaccli.autodiff.compiled import difference, first_sentence
    from jaccli.errors import describe

    tensors = [p.detach() for p in primals]
    cap = max(1 << 20, 8 * want.numel() * want.element_size())  # bytes per folded constant
    cap = cap if fold_cap is None else min(cap, fold_cap)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _graph(compute, tensors, decompose=False, cap=cap)
            run = graph.forward
            try:
                run = direct(graph)
                got = run(*tensors)[0]
            except Exception:  # noqa: BLE001 - the GraphModule's own code still runs it
                run = graph.forward
                got = run(*tensors)[0]
    except Exception as exc:  # noqa: BLE001 - any failure: the steady state stays eager
        return None, f"it could not be traced ({first_sentence(describe(exc))})", ""
    if not _agrees(got, want):
        return None, "the traced graph did not reproduce the eager values", ""
    kernel, label = _call(run, tensors), TRACED
    on_cpu = want.device.type == "cpu"  # a CUDA graph's ops do not run on torch's CPU threads
    if on_cpu and torch.get_num_threads() > 1 and _one_thread_is_faster(kernel):
        kernel, label = _on_one_thread(kernel), f"{TRACED}, on one thread"
    if not compile:
        return kernel, None, label
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = _inductor(compute, tensors, cap)
            problem = difference({"values": compiled()}, {"values": want})
    except Exception as exc:  # noqa: BLE001 - Inductor failed: the traced graph still serves
        problem = first_sentence(describe(exc))
    if problem is not None:
        return kernel, f"could not be compiled ({problem}); ran the traced graph uncompiled", label
    label = "traced to one aten graph (make_fx), compiled by TorchInductor"
    compiled()  # past the wrapper's first call (see _inductor), before timing it
    if on_cpu and torch.get_num_threads() > 1 and _one_thread_is_faster(compiled, runs=15):
        compiled, label = _on_one_thread(compiled), f"{label}, on one thread"  # its OpenMP follows torch's
    return compiled, None, label


def _one_thread_is_faster(kernel: Callable[[], Any], runs: int = 7) -> bool:
    """Small graphs run faster on one thread: each op's work is too small to split, and on a
    busy machine a parallel op waits for a second core (its median was 100x its min on a
    shared 2-core VM). Timed here, alternately, by the median of a few runs each."""
    import statistics
    import time

    import torch

    threads = torch.get_num_threads()
    one, many = [], []
    for _ in range(runs):
        for times, count in ((one, 1), (many, threads)):
            torch.set_num_threads(count)
            try:
                start = time.perf_counter()
                kernel()
                times.append(time.perf_counter() - start)
            finally:
                torch.set_num_threads(threads)
    return statistics.median(one) <= statistics.median(many)


def _on_one_thread(kernel: Callable[[], Any]) -> Callable[[], Any]:
    import torch

    get, set_threads = torch.get_num_threads, torch.set_num_threads

    def single() -> Any:
        threads = get()
        set_threads(1)
        try:
            return kernel()
        finally:
            set_threads(threads)

    return single


def _agrees(got: Any, want: Any) -> bool:
    """The same values, up to a few units in the last place: make_fx records a composite op
    (the backward of ``var`` or ``norm``) as the aten ops it is made of, whose rounding can
    differ from the fused kernel eager torch runs. Anything more is a different function."""
    import torch

    if got.shape != want.shape or got.dtype != want.dtype:
        return False
    if torch.equal(got, want):
        return True
    if not want.is_floating_point() and not want.is_complex():
        return False
    eps = torch.finfo(want.dtype).eps * 8
    scale = float(want.abs().max()) if want.numel() else 0.0
    return torch.allclose(got, want, rtol=eps, atol=eps * scale, equal_nan=True)


def _call(run: Callable[..., Any], tensors: list) -> Callable[[], Any]:
    def kernel() -> Any:
        return run(*tensors)[0]

    return kernel


def _graph(compute: Callable[..., Any], tensors: list, decompose: bool, cap: int) -> Any:
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    from jaccli.autodiff import compiled

    def flat(*args: Any) -> list:
        return [compute(*args)]

    table = None
    if decompose:
        from torch._inductor.decomposition import select_decomp_table

        table = select_decomp_table()
    functional = torch.func.functionalize(flat, remove="mutations")
    graph = make_fx(functional, decomposition_table=table)(*tensors)
    compiled.drop_zero_terms(graph)
    compiled.drop_dead_code(graph)
    compiled.detach_constants(graph)
    fold_constants(graph, cap)
    simplify(graph)
    if not decompose:  # the eager graph; Inductor plans its own buffers
        fewer_views(graph)
        in_place(graph)
    return graph


def _inductor(compute: Callable[..., Any], tensors: list, cap: int) -> Callable[[], Any]:
    from torch._inductor.compile_fx import compile_fx_inner

    graph = _graph(compute, tensors, decompose=True, cap=cap)
    compiled = compile_fx_inner(graph, list(tensors), is_inference=True)
    run_graph = getattr(compiled, "current_callable", None) or compiled
    first = True

    def call() -> Any:
        nonlocal first
        if first:  # the wrapper's first call finishes Inductor's bookkeeping (see jaccli.autodiff.compiled)
            first = False
            return compiled(list(tensors))[0]
        return run_graph(list(tensors))[0]

    return call


def fold_constants(graph: Any, cap: int) -> int:
    """Compute once every node that depends on no placeholder; store it as a buffer.

    Nodes that draw random numbers are left alone; so is a folded value above ``cap`` bytes
    (an expanded seed block can be larger than the work it saves), and the total stored stays
    under ``4 * cap``. Returns the number of folded nodes kept in the graph.
    """
    import torch
    from torch.utils._pytree import tree_flatten, tree_map

    values: dict = {}
    for node in graph.graph.nodes:
        if node.op == "get_attr":
            values[node] = getattr(graph, node.target)
            continue
        if node.op != "call_function":
            continue
        filled = _filled(node)
        if filled is not None:
            values[node] = filled
            continue
        leaves, _ = tree_flatten((node.args, node.kwargs))
        if not all(a in values for a in leaves if isinstance(a, torch.fx.Node)):
            continue
        if torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ()):
            continue
        args, kwargs = tree_map(
            lambda a: values[a] if isinstance(a, torch.fx.Node) else a, (node.args, node.kwargs)
        )
        values[node] = node.target(*args, **kwargs)
    kept, total = 0, 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node not in values:
            continue
        if all(u in values for u in node.users):  # only folded nodes read it: it goes
            continue
        value = values[node]
        if not isinstance(value, torch.Tensor):
            continue
        size = value.numel() * value.element_size()
        if size > cap or total + size > 4 * cap:
            continue
        total += size
        name = f"_folded_{kept}"
        kept += 1
        graph.register_buffer(name, value.detach())
        with graph.graph.inserting_before(node):
            new = graph.graph.get_attr(name)
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return kept


def _filled(node: Any) -> Any:
    """The value of an op whose result does not depend on its input's values, only on its
    shape (static in the trace): ``ones_like(x)`` (the seed of a gradient, whose ``x`` is the
    whole forward pass), ``zeros_like``, ``full_like``, ``x ** 0``. None for any other op."""
    import torch

    aten = torch.ops.aten
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or value.is_complex()):
        return None
    target, args = node.target, node.args
    if target is aten.ones_like.default:
        fill = 1
    elif target is aten.zeros_like.default:
        fill = 0
    elif target is aten.full_like.default and isinstance(args[1], (int, float)):
        fill = args[1]
    elif target is aten.pow.Tensor_Scalar and isinstance(args[1], (int, float)) and args[1] == 0:
        fill = 1  # x ** 0 is 1 for every x, NaN included
    else:
        return None
    try:
        shape = [int(d) for d in value.shape]
        stride = [int(d) for d in value.stride()]
    except (TypeError, RuntimeError):  # symbolic sizes: leave it to run
        return None
    return torch.empty_strided(shape, stride, dtype=value.dtype, device=value.device).fill_(fill)


def simplify(graph: Any) -> None:
    """Drop the no-ops a functionalized trace leaves: aliases, ``cat`` of one tensor, and
    ``clone`` of a contiguous intermediate (nothing is mutated any more, so no copy is needed)."""
    import torch

    aten = torch.ops.aten
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        source = None
        if node.target is aten.alias.default:
            source = node.args[0]
        elif node.target is aten.cat.default and len(node.args[0]) == 1:
            source = node.args[0][0]
        elif node.target is aten.clone.default:
            source = node.args[0]
        if not isinstance(source, torch.fx.Node):
            continue
        value, before = node.meta.get("val"), source.meta.get("val")
        if not (isinstance(value, torch.Tensor) and isinstance(before, torch.Tensor)):
            continue
        if source.op == "placeholder" and any(u.op == "output" for u in node.users):
            continue  # an output must not be the caller's own tensor
        if value.shape != before.shape or value.dtype != before.dtype or not before.is_contiguous():
            continue
        node.replace_all_uses_with(source)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def fewer_views(graph: Any) -> None:
    """A view of a view of a contiguous tensor is one view; a view to the same shape is none;
    ``x ** 1.0`` is ``x`` (torch computes it as a copy)."""
    import torch

    aten = torch.ops.aten
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        if node.target is aten.view.default:
            source = node.args[0]
            while (
                isinstance(source, torch.fx.Node)
                and source.target is aten.view.default
                and _contiguous(source.args[0])
            ):
                source = source.args[0]
            if source is not node.args[0]:
                node.args = (source, node.args[1])
            before = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
            if _same(before, value) and not _feeds_output(node, source):
                node.replace_all_uses_with(source)
        elif node.target is aten.pow.Tensor_Scalar and node.args[1] == 1 and value.is_floating_point():
            source = node.args[0]
            if _same(source.meta.get("val"), value) and not _feeds_output(node, source):
                node.replace_all_uses_with(source)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def _contiguous(node: Any) -> bool:
    import torch

    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return isinstance(value, torch.Tensor) and value.is_contiguous()


def _same(before: Any, value: Any) -> bool:
    import torch

    return (
        isinstance(before, torch.Tensor)
        and before.shape == value.shape
        and before.dtype == value.dtype
        and before.stride() == value.stride()
    )


def _feeds_output(node: Any, source: Any) -> bool:
    """Replacing ``node`` by ``source`` would hand a placeholder or constant to the output."""
    return source.op in ("placeholder", "get_attr") and any(u.op == "output" for u in node.users)


def _in_place_ops() -> dict:
    """Out-of-place pointwise op: (its in-place form, whether its first two operands commute)."""
    import torch

    aten = torch.ops.aten
    return {
        aten.add.Tensor: (aten.add_.Tensor, True),
        aten.mul.Tensor: (aten.mul_.Tensor, True),
        aten.sub.Tensor: (aten.sub_.Tensor, False),
        aten.div.Tensor: (aten.div_.Tensor, False),
        aten.add.Scalar: (aten.add_.Scalar, False),
        aten.mul.Scalar: (aten.mul_.Scalar, False),
        aten.sub.Scalar: (aten.sub_.Scalar, False),
        aten.div.Scalar: (aten.div_.Scalar, False),
        aten.neg.default: (aten.neg_.default, False),
        aten.exp.default: (aten.exp_.default, False),
        aten.sin.default: (aten.sin_.default, False),
        aten.cos.default: (aten.cos_.default, False),
        aten.tanh.default: (aten.tanh_.default, False),
        aten.pow.Tensor_Scalar: (aten.pow_.Scalar, False),
    }


def in_place(graph: Any) -> None:
    """Write a pointwise op's result into an operand that the graph made and reads nowhere
    else (the same arithmetic, one allocation fewer).

    An operand qualifies when it is the fresh result of an op that returns no view (a
    placeholder, a folded constant or a view of anything is never written), this op is its
    only reader, and it has the result's shape, strides and dtype (no broadcasting, no type
    promotion). ``a + b`` and ``a * b`` may write into either operand (IEEE addition and
    multiplication commute exactly).
    """
    import torch

    table = _in_place_ops()
    written: set = set()  # nodes turned in-place: their result is their (fresh) first operand
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in table:
            continue
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        target, commutes = table[node.target]
        choices = [0, 1] if commutes and not node.kwargs else [0]  # b + alpha * a is not a + alpha * b
        for i in choices:
            if i >= len(node.args) or not _writable(node.args[i], node, value, written):
                continue
            args = list(node.args)
            if i == 1:
                args[0], args[1] = args[1], args[0]
            node.target, node.args = target, tuple(args)
            written.add(node)
            break
    graph.recompile()


def _writable(operand: Any, reader: Any, value: Any, written: set) -> bool:
    import torch

    if not isinstance(operand, torch.fx.Node) or operand.op != "call_function":
        return False
    if list(operand.users) != [reader]:
        return False
    if operand in written:
        return _same(operand.meta.get("val"), value)
    if operand.target is torch.ops.aten._unsafe_view.default:
        return False  # a view that its schema does not declare
    schema = getattr(operand.target, "_schema", None)
    if schema is None or len(schema.returns) != 1 or schema.returns[0].alias_info is not None:
        return False  # a view (or an op of unknown aliasing) shares another tensor's memory
    return _same(operand.meta.get("val"), value)


def direct(graph: Any) -> Callable[..., Any]:
    """The graph as one Python function whose lines call the ops' C++ entry points (``_op`` of
    each OpOverload) bound as globals; intermediates are deleted after their last use, as
    FX's code does. Constants (folded tensors, dtypes, devices, any non-literal) are globals
    too, so nothing is printed and parsed back."""
    import torch

    nodes = list(graph.graph.nodes)
    last: dict = {}
    for i, node in enumerate(nodes):
        for used in node.all_input_nodes:
            last[used] = i
    names = {node: f"v{i}" for i, node in enumerate(nodes)}
    env: dict[str, Any] = {}
    params, lines = [], []

    def constant(value: Any) -> str:
        name = f"c{len(env)}"
        env[name] = value
        return name

    def arg(value: Any) -> str:
        if isinstance(value, torch.fx.Node):
            return names[value]
        if isinstance(value, (list, tuple)):
            inner = ", ".join(arg(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
        if value is None or isinstance(value, (bool, int, str)):
            return repr(value)
        return constant(value)  # floats (inf, nan), dtypes, devices, memory formats, ...

    for i, node in enumerate(nodes):
        name = names[node]
        if node.op == "placeholder":
            params.append(name)
            continue
        if node.op == "get_attr":
            value: Any = graph
            for part in str(node.target).split("."):
                value = getattr(value, part)
            lines.append(f"{name} = {constant(value)}")
        elif node.op == "call_function":
            target = node.target
            call = constant(target._op if isinstance(target, torch._ops.OpOverload) else target)
            args = [arg(a) for a in node.args] + [f"{k}={arg(v)}" for k, v in node.kwargs.items()]
            lines.append(f"{name} = {call}({', '.join(args)})")
        elif node.op == "output":
            lines.append(f"return {arg(node.args[0])}")
            continue
        else:
            raise ValueError(f"a {node.op} node")
        dead = [names[u] for u in node.all_input_nodes if last.get(u) == i and u.op != "placeholder"]
        if not node.users:
            dead.append(name)
        if dead:
            lines.append("del " + ", ".join(dict.fromkeys(dead)))
    source = f"def run({', '.join(params)}):\n" + "".join(f"    {line}\n" for line in lines)
    namespace: dict[str, Any] = dict(env)
    exec(compile(source, "<jaccli.sparse.kernel>", "exec"), namespace)  # noqa: S102 - jac's own code
    return namespace["run"]
