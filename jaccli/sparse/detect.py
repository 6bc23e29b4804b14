"""Sparsity patterns by tracing: which input elements each output element can depend on.

The function is traced once with ``make_fx`` on fake tensors (so data-dependent control flow
cannot silently pick one branch: it fails, and the user is told to give ``--sparsity``), and
the ATen graph is walked node by node. Every tensor that depends on the differentiated inputs
carries a boolean ``scipy.sparse`` CSR matrix, one row per element of the tensor (row-major),
one column per element of the inputs (concatenated in ``--argnums`` order); tensors that do
not depend on them are computed for real (a closure's index tensor, an ``arange``), so that
indexing with them is exact.

Rules (each gives a superset of the true pattern, never a subset):

- ops that only move elements (views, reshape, permute, expand, slicing, select, cat, stack,
  roll, flip, pad, gather, index, index_select, scatter, where with a known condition, ...)
  are run on tensors of element ids (``arange``), which says exactly which input element each
  output element reads; the rows are gathered accordingly;
- pointwise ops (``torch.Tag.pointwise``): the union of the operands' rows, broadcast;
- reductions over dims (sum, mean, amax, prod, norm, var, logsumexp, ...): the union along the
  reduced dims; ops along a dim (softmax, cumsum, sort): that union, broadcast back;
- mm, bmm, mv, dot, addmm, baddbmm: the union of a row of A and a column of B (with a known
  constant matrix, only the products whose constant factor is nonzero);
- convolutions: the window of each output element across the group's channels (with a known
  constant weight, only its nonzero taps), all the weight's taps of its channel, its bias;
- integer or boolean results (comparisons, argmax, indices) carry no derivative;
- any other op: each output element depends on every element the op reads ("fell back", and
  the op is named in :attr:`Pattern.fallbacks`).

For Hessians, each op that is not linear (products of two dependent tensors, unary functions
other than piecewise-linear ones, ...) adds ``Pᵀ P`` of its output's rows to the pattern of
second-order interactions: d²f/dx_i dx_j can be nonzero only if some such op mixes x_i and x_j.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from jaccli import trees
from jaccli.errors import InputError

# Fall-back rows above this many stored entries would not fit: ask for --sparsity instead.
MAX_FALLBACK_NNZ = 200_000_000


class TraceError(InputError):
    """The function could not be traced (data-dependent control flow, .item(), numpy)."""


@dataclass
class Pattern:
    """A detected pattern and what was learnt on the way."""

    matrix: Any  # scipy.sparse.csr_matrix of bools: (output elements, input elements)
    output_sizes: list[int]  # per output leaf (float leaves), in order
    input_sizes: list[int]  # per differentiated argument, in --argnums order
    fallbacks: list[str] = field(default_factory=list)  # ops with no rule (depends on all it reads)
    hessian: Any = None  # csr (inputs x inputs) when asked for


@dataclass
class _Dep:
    """A tensor that depends on the differentiated inputs: one pattern row per element."""

    rows: Any  # csr (numel, n) bool
    shape: tuple
    floating: bool  # False: integer or boolean values, no derivative, value unknown


def detect(
    fn: Callable[..., Any],
    primals: Sequence[Any],
    argnums: Sequence[int],
    hessian: bool = False,
) -> Pattern:
    """The pattern of d fn(*primals) / d primals[argnums] (and of the Hessian when asked)."""
    import torch

    graph, out_leaves = _trace(fn, primals, argnums)
    sizes = [primals[a].numel() for a in argnums]
    walker = _Walker(graph, sizes, hessian)
    values = walker.run()
    n = sum(sizes)
    blocks, out_sizes = [], []
    for node, leaf in zip(values, out_leaves):
        if not (isinstance(leaf, torch.Tensor) and (leaf.is_floating_point() or leaf.is_complex())):
            continue
        out_sizes.append(leaf.numel())
        if isinstance(node, _Dep):
            blocks.append(node.rows)
        else:
            blocks.append(_empty(leaf.numel(), n))
    matrix = _vstack(blocks, n)
    h = None
    if hessian:
        h = walker.second.tocsr() if walker.second is not None else _empty(n, n)
        h = _binary((h + h.T).tocsr())
    return Pattern(matrix, out_sizes, sizes, sorted(walker.fallbacks), h)


def _trace(fn: Callable[..., Any], primals: Sequence[Any], argnums: Sequence[int]) -> tuple:
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx

    structure = []

    def flat(*diff: Any) -> list:
        args = list(primals)
        for a, t in zip(argnums, diff):
            args[a] = t
        leaves = [leaf for _, leaf in trees.leaves(fn(*args))]
        structure.append(leaves)
        return leaves

    diff = [primals[a].detach() for a in argnums]
    try:
        try:
            functional = torch.func.functionalize(flat, remove="mutations")
            graph = make_fx(functional, tracing_mode="fake", _allow_non_fake_inputs=True)(*diff)
        except Exception as first:
            if "functionalize" not in str(first).lower():
                raise
            # an op functionalize has no rule for (an autograd.Function): trace as it is, and
            # keep the graph only if nothing in it writes in place
            graph = make_fx(flat, tracing_mode="fake", _allow_non_fake_inputs=True)(*diff)
            if any(_mutates(node) for node in graph.graph.nodes):
                raise first
    except Exception as exc:  # data-dependent branches, .item(), numpy(): no pattern by tracing
        from jaccli.errors import describe

        text = describe(exc).splitlines()[0] if describe(exc) else type(exc).__name__
        raise TraceError(
            f"cannot detect the sparsity pattern: tracing the function failed ({text[:200]}); a "
            "function whose control flow depends on its input values (or that calls .item() or numpy) "
            "cannot be traced: give the pattern with --sparsity P.npz (a scipy.sparse .npz, outputs x inputs)"
        ) from exc
    return graph, structure[-1]


def _mutates(node: Any) -> bool:
    schema = getattr(getattr(node, "target", None), "_schema", None)
    return node.op == "call_function" and schema is not None and schema.is_mutable


def _empty(rows: int, n: int) -> Any:
    import numpy as np
    import scipy.sparse as sp

    return sp.csr_matrix((np.zeros(0, bool), np.zeros(0, np.int32), np.zeros(rows + 1, np.int64)), (rows, n))


def _vstack(blocks: list, n: int) -> Any:
    import scipy.sparse as sp

    if not blocks:
        return _empty(0, n)
    if len(blocks) == 1:
        return blocks[0].tocsr()
    return sp.vstack(blocks, format="csr")


def _binary(m: Any) -> Any:
    """Sum of bool matrices is their union; keep bools, drop explicit zeros, sorted indices."""
    m = m.tocsr()
    if m.dtype != bool:
        m = m.astype(bool)
    m.eliminate_zeros()
    m.sort_indices()
    return m


def _ids(shape: Sequence[int], offset: int) -> Any:
    """Element ids offset+1 .. offset+numel (0 means: reads no dependent element)."""
    import torch

    numel = math.prod(shape)
    return torch.arange(offset + 1, offset + 1 + numel, dtype=torch.float64).reshape(tuple(shape))


def _gather_rows(stack: Any, ids: Any) -> Any:
    """Rows of ``stack`` (row 0 empty) picked by ids: the move rule."""
    import numpy as np

    index = ids.reshape(-1).round().to(dtype=__import__("torch").int64).numpy()
    return stack[np.asarray(index)]


def _broadcast(dep: _Dep, shape: Sequence[int]) -> Any:
    """dep's rows broadcast to ``shape`` (numpy broadcasting, leading dims added)."""
    import torch

    shape = tuple(shape)
    if tuple(dep.shape) == shape:
        return dep.rows
    ids = torch.arange(math.prod(dep.shape), dtype=torch.int64).reshape(dep.shape).expand(shape)
    return dep.rows[ids.reshape(-1).numpy()]


def _reduce(rows: Any, shape: Sequence[int], dims: Sequence[int] | None) -> tuple[Any, tuple]:
    """Union of rows along ``dims`` (all when None): (rows, the keepdim shape)."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    shape = tuple(shape)
    nd = len(shape)
    dims = list(range(nd)) if dims is None or (not dims and nd) else [d % nd for d in dims] if nd else []
    kept = tuple(1 if i in dims else s for i, s in enumerate(shape))
    n_out = math.prod(kept)
    groups = torch.arange(n_out, dtype=torch.int64).reshape(kept).expand(shape).reshape(-1).numpy()
    numel = len(groups)
    r = sp.csr_matrix((np.ones(numel, bool), (groups, np.arange(numel))), shape=(n_out, numel))
    return _binary(r @ rows), kept


# --- op tables --------------------------------------------------------------------------------------


def _ops() -> dict[str, Any]:
    import torch

    aten = torch.ops.aten
    prims = torch.ops.prims

    def o(*names: str) -> set:
        found = set()
        for name in names:
            packet, _, overload = name.partition(".")
            op = getattr(aten, packet, None)
            if op is None:
                continue
            if overload:
                op = getattr(op, overload, None)
                if op is not None:
                    found.add(op)
            else:
                found.update(getattr(op, ov) for ov in op.overloads())
        return found

    # op -> positions of arguments that are indices (kept as they are), not data
    moves: dict[Any, tuple] = {}
    for op in o(
        "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select",
        "unsqueeze", "squeeze", "flip", "roll", "cat", "stack", "constant_pad_nd", "clone", "alias",
        "lift_fresh_copy", "contiguous", "diagonal", "narrow", "repeat", "unfold", "split",
        "split_with_sizes", "unbind", "chunk", "movedim", "view_copy", "permute_copy", "expand_copy",
        "slice_copy", "select_copy", "unsqueeze_copy", "squeeze_copy", "transpose_copy", "t_copy",
        "diagonal_copy", "unbind_copy", "split_copy", "split_with_sizes_copy", "alias_copy",
        "reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d",
        "replication_pad2d", "replication_pad3d", "slice_scatter", "select_scatter",
        "diagonal_scatter", "tril", "triu", "rot90", "pixel_shuffle", "pixel_unshuffle", "im2col",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_reshape_alias",
        "view_as", "expand_as", "reshape_as", "flatten", "unflatten", "swapaxes", "swapdims",
        "moveaxis", "tile", "hstack", "vstack", "column_stack", "fill_diagonal_", "repeat_interleave",
        "atleast_1d", "atleast_2d", "ravel", "mT", "positive",
    ):  # fmt: skip
        moves[op] = ()
    for name, idx in (
        ("gather", (2,)), ("index_select", (2,)), ("index", (1,)), ("take", (1,)), ("where.self", (0,)),
        ("masked_fill", (1,)), ("take_along_dim", (1,)),
    ):  # fmt: skip
        for op in o(name):
            moves[op] = idx
    reductions = {}  # op -> (position of dim, kwarg name) or None for "all"
    for name in ("sum", "mean", "nansum", "prod", "amax", "amin", "logsumexp", "var", "std",
                 "var_mean", "std_mean", "max", "min", "aminmax", "nanmean", "norm", "count_nonzero",
                 "linalg_vector_norm", "all", "any", "argmax", "argmin", "median", "nanmedian", "mode",
                 ):  # fmt: skip
        for op in o(name):
            if name in ("max", "min", "median", "nanmedian") and op._overloadname in (
                "other",
                "default",
                "out",
            ):
                if op._overloadname == "other":
                    continue  # maximum-like pointwise: tagged pointwise
            reductions[op] = name
    along = {}  # ops along one dim: every element depends on its whole line; dim position
    for name, pos in (("_softmax", 1), ("softmax", 1), ("_log_softmax", 1), ("log_softmax", 1),
                      ("cumsum", 1), ("cumprod", 1), ("cummax", 1), ("cummin", 1), ("sort", 1),
                      ("logcumsumexp", 1), ("topk", 2), ("kthvalue", 2)):  # fmt: skip
        for op in o(name):
            along[op] = pos
    matmuls = o(
        "mm",
        "bmm",
        "mv",
        "dot",
        "vdot",
        "addmm",
        "baddbmm",
        "addmv",
        "matmul",
        "addbmm",
        "inner",
        "outer",
        "ger",
    )
    convs = o("convolution", "_convolution")
    linear = o(
        "add",
        "sub",
        "neg",
        "rsub",
        "clone",
        "alias",
        "_to_copy",
        "relu",
        "abs",
        "clamp",
        "clamp_min",
        "clamp_max",
        "maximum",
        "minimum",
        "fmax",
        "fmin",
        "hardtanh",
        "leaky_relu",
        "where",
        "positive",
        "sum",
        "mean",
        "nansum",
        "cumsum",
        "amax",
        "amin",
        "max",
        "min",
        "sort",
        "topk",
        "cummax",
        "cummin",
        "median",
        "kthvalue",
        "fill",
        "zeros_like",
        "ones_like",
        "full_like",
        "copy",
        "conj",
        "real",
        "imag",
        "sign",
        "floor",
        "ceil",
        "round",
        "trunc",
        "frac",
        "threshold",
        "aminmax",
        "masked_fill",
        "nanmean",
        "relu6",
        "hardshrink",
        "softshrink",
    ) | {prims.convert_element_type.default}
    return {
        "moves": moves,
        "reductions": reductions,
        "along": along,
        "matmuls": matmuls,
        "convs": convs,
        "linear": linear,
        "to_copy": o("_to_copy", "to") | {prims.convert_element_type.default},
        # duplicate indices: every source sent to an element counts (autograd's backward says so)
        "adds": o(
            "scatter_add", "index_add", "index_put", "scatter_reduce.two", "scatter.src", "scatter.value"
        ),
    }


_TABLES: dict[str, Any] = {}


def _tables() -> dict[str, Any]:
    if not _TABLES:
        _TABLES.update(_ops())
    return _TABLES


class _Walker:
    def __init__(self, graph: Any, sizes: Sequence[int], hessian: bool):
        self.graph = graph
        self.sizes = list(sizes)
        self.n = sum(sizes)
        self.hessian = hessian
        self.second = None  # accumulated Hessian pattern (csr n x n)
        self.fallbacks: set[str] = set()

    # -- the walk --
    def run(self) -> list:
        import torch

        env: dict[Any, Any] = {}
        placeholder = 0
        offsets = [0]
        for s in self.sizes:
            offsets.append(offsets[-1] + s)
        users = {node: len(node.users) for node in self.graph.graph.nodes}
        result = []
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                value = node.meta.get("val")
                shape = tuple(value.shape)
                k = placeholder
                placeholder += 1
                import numpy as np
                import scipy.sparse as sp

                numel = self.sizes[k]
                rows = sp.csr_matrix(
                    (np.ones(numel, bool), (np.arange(numel), np.arange(offsets[k], offsets[k] + numel))),
                    shape=(numel, self.n),
                )
                env[node] = _Dep(rows, shape, True)
            elif node.op == "get_attr":
                env[node] = getattr(self.graph, node.target)
            elif node.op == "call_function":
                env[node] = self.call(node, env)
            elif node.op == "output":
                outs = node.args[0]
                result = [env[a] if isinstance(a, torch.fx.Node) else a for a in outs]
            # free what no later node needs (patterns of large tensors are large)
            for arg in node.all_input_nodes:
                users[arg] -= 1
                if users[arg] <= 0 and node.op != "output":
                    env.pop(arg, None)
        return result

    def call(self, node: Any, env: dict) -> Any:
        import torch
        from torch.utils._pytree import tree_flatten, tree_map

        target = node.target

        def value_of(a: Any) -> Any:
            return env[a] if isinstance(a, torch.fx.Node) else a

        args = tree_map(value_of, node.args)
        kwargs = tree_map(value_of, node.kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        if target is operator.getitem:
            return args[0][args[1]]
        deps = [x for x in leaves if isinstance(x, _Dep)]
        if not deps:  # a constant: compute it for real
            return target(*args, **kwargs)
        value = node.meta.get("val")
        outputs = value if isinstance(value, (tuple, list)) else [value]
        if not any(
            isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) for v in outputs
        ):
            return self._no_derivative(value)
        if not any(d.floating for d in deps):  # only integer or boolean dependent inputs
            return self._no_derivative(value)
        result = self._rule(node, target, args, kwargs, deps, value)
        if self.hessian and self._nonlinear(target, args, kwargs):
            for r in result if isinstance(result, (list, tuple)) else [result]:
                if isinstance(r, _Dep) and r.floating:
                    self._add_second(r.rows)
        return result

    # -- rules --
    def _no_derivative(self, value: Any) -> Any:
        import torch

        def one(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                return _Dep(_empty(v.numel(), self.n), tuple(v.shape), False)
            return v

        if isinstance(value, (tuple, list)):
            return [one(v) for v in value]
        return one(value)

    def _wrap(self, value: Any, rows_list: list) -> Any:
        """_Dep results for a node's value(s), given rows per tensor output."""
        import torch

        if isinstance(value, (tuple, list)):
            out = []
            for v, r in zip(value, rows_list):
                floating = isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
                out.append(_Dep(r if floating else _empty(v.numel(), self.n), tuple(v.shape), floating))
            return out
        return _Dep(rows_list[0], tuple(value.shape), True)

    def _rule(self, node: Any, target: Any, args: Any, kwargs: Any, deps: list, value: Any) -> Any:
        import torch

        t = _tables()
        try:
            if target in t["to_copy"]:
                (src,) = [a for a in args if isinstance(a, _Dep)][:1] or [None]
                if src is not None and tuple(src.shape) == tuple(value.shape):
                    return _Dep(src.rows, src.shape, True)
            if getattr(getattr(target, "_overloadpacket", None), "__name__", "") == "copy":
                src = args[1]  # copy(self, src): src's values, broadcast to self's shape
                if isinstance(src, _Dep):
                    return _Dep(_broadcast(src, tuple(value.shape)), tuple(value.shape), src.floating)
                return _Dep(_empty(value.numel(), self.n), tuple(value.shape), True)
            if target in t["moves"] and self._known_indices(args, kwargs, t["moves"][target]):
                return self._move(target, args, kwargs, t["moves"][target], value)
            if torch.Tag.pointwise in getattr(target, "tags", ()):
                return self._pointwise(args, kwargs, value)
            if target in t["reductions"]:
                return self._reduction(target, args, kwargs, value)
            if target in t["along"]:
                return self._along(args, t["along"][target], value)
            if target in t["matmuls"]:
                return self._matmul(target, args, value)
            if target in t["convs"] and not args[6]:
                return self._conv(args, value)
            if target in t["adds"]:
                return self._accumulate(target, args, kwargs, value)
        except _NoRule:
            pass
        return self._fallback(target, deps, value)

    def _known_indices(self, args: Any, kwargs: Any, positions: tuple) -> bool:
        from torch.utils._pytree import tree_flatten

        for p in positions:
            if p < len(args):
                leaves, _ = tree_flatten(args[p])
                if any(isinstance(x, _Dep) for x in leaves):
                    return False  # indices computed from the inputs: their values are unknown
        return True

    def _move(self, target: Any, args: Any, kwargs: Any, index_positions: tuple, value: Any) -> Any:
        import scipy.sparse as sp
        import torch
        from torch.utils._pytree import tree_map

        stack = [_empty(1, self.n)]
        offset = [0]

        def data(a: Any) -> Any:
            if isinstance(a, _Dep):
                ids = _ids(a.shape, offset[0])
                offset[0] += math.prod(a.shape)
                stack.append(a.rows if a.floating else _empty(a.rows.shape[0], self.n))
                return ids
            if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex()):
                return torch.zeros(a.shape, dtype=torch.float64)  # a constant: reads nothing dependent
            return a

        new_args = []
        for i, a in enumerate(args):
            new_args.append(a if i in index_positions else tree_map(data, a))
        new_kwargs = dict(kwargs)
        name = getattr(target, "__name__", str(target))
        if "constant_pad_nd" in name:
            new_args = new_args[:2] + [0.0]
        if "masked_fill" in name or name.startswith("scatter.value"):
            if not isinstance(new_args[2], torch.Tensor):
                new_args[2] = 0.0
        if "index_put" in name and len(new_args) > 3 and new_args[3]:
            raise _NoRule  # accumulate=True adds, it does not move
        if "dtype" in new_kwargs:
            new_kwargs.pop("dtype")
        moved = target(*new_args, **new_kwargs)
        table = sp.vstack(stack, format="csr") if len(stack) > 1 else stack[0]
        outs = moved if isinstance(moved, (tuple, list)) else [moved]
        rows = [_binary(_gather_rows(table, m)) for m in outs]
        return self._wrap(value, rows)

    def _pointwise(self, args: Any, kwargs: Any, value: Any) -> Any:
        from torch.utils._pytree import tree_flatten

        shape = tuple(value.shape)
        leaves, _ = tree_flatten((args, kwargs))
        total = None
        for d in leaves:
            if isinstance(d, _Dep) and d.floating:
                r = _broadcast(d, shape)
                total = r if total is None else total + r
        return _Dep(_binary(total) if total is not None else _empty(math.prod(shape), self.n), shape, True)

    def _reduction(self, target: Any, args: Any, kwargs: Any, value: Any) -> Any:
        src = args[0]
        if not isinstance(src, _Dep):
            raise _NoRule
        name = target._overloadpacket.__name__ if hasattr(target, "_overloadpacket") else ""
        dims = None
        overload = getattr(target, "_overloadname", "")
        if name in ("linalg_vector_norm",):
            dims = args[2] if len(args) > 2 else kwargs.get("dim")
        elif name in ("norm",):
            dims = args[2] if len(args) > 2 else kwargs.get("dim")
        elif overload in ("default",) and name not in (
            "var",
            "std",
            "var_mean",
            "std_mean",
            "amax",
            "amin",
            "logsumexp",
            "count_nonzero",
        ):
            dims = None
        else:
            dims = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(dims, int):
            dims = [dims]
        if dims is not None and not isinstance(dims, (list, tuple)):
            raise _NoRule
        rows, kept = _reduce(src.rows, src.shape, list(dims) if dims is not None else None)
        values = value if isinstance(value, (tuple, list)) else [value]
        out_rows = []
        for v in values:
            if v.numel() != rows.shape[0]:
                raise _NoRule
            out_rows.append(rows)
        return self._wrap(value, out_rows)

    def _along(self, args: Any, pos: int, value: Any) -> Any:
        import torch

        src = args[0]
        if not isinstance(src, _Dep):
            raise _NoRule
        dim = args[pos] if len(args) > pos else -1
        if not isinstance(dim, int):
            raise _NoRule
        if len(src.shape) == 0:
            rows, kept = src.rows, ()
        else:
            rows, kept = _reduce(src.rows, src.shape, [dim])
        values = value if isinstance(value, (tuple, list)) else [value]
        out = []
        for v in values:
            shape = tuple(v.shape)
            ids = torch.arange(math.prod(kept), dtype=torch.int64).reshape(kept).expand(shape)
            out.append(rows[ids.reshape(-1).numpy()])
        return self._wrap(value, out)

    def _matmul(self, target: Any, args: Any, value: Any) -> Any:
        import torch

        name = target._overloadpacket.__name__
        shape = tuple(value.shape)
        bias = None
        if name in ("addmm", "baddbmm", "addmv", "addbmm"):
            bias, a, b = args[0], args[1], args[2]
        else:
            a, b = args[0], args[1]
        if name in ("addbmm", "outer", "ger", "inner", "matmul"):
            raise _NoRule
        total = None

        def add(r: Any) -> None:
            nonlocal total
            total = r if total is None else total + r

        if isinstance(bias, _Dep):
            add(_broadcast(bias, shape))
        if name in ("dot", "vdot"):
            for x in (a, b):
                if isinstance(x, _Dep):
                    add(_reduce(x.rows, x.shape, None)[0])
            return _Dep(_binary(total), shape, True)
        if name in ("mv", "addmv"):
            if isinstance(a, _Dep):
                r, kept = _reduce(a.rows, a.shape, [1])
                add(r)
            if isinstance(b, _Dep):
                if isinstance(a, torch.Tensor) and self._small(a, b.shape[0]):
                    add(self._const_left(a, b.rows, 1))
                else:
                    r, _ = _reduce(b.rows, b.shape, None)
                    add(_broadcast(_Dep(r, (1,), True), shape))
            return _Dep(_binary(total), shape, True)
        # mm, bmm, addmm, baddbmm: (..., m, k) @ (..., k, n)
        if isinstance(a, _Dep):
            if (
                isinstance(b, torch.Tensor)
                and a.rows is not None
                and len(a.shape) == 2
                and self._small(b, a.shape[0])
            ):
                add(self._const_right(b, a.rows, a.shape[0]))
            else:
                r, kept = _reduce(a.rows, a.shape, [len(a.shape) - 1])
                add(_broadcast(_Dep(r, kept, True), shape))
        if isinstance(b, _Dep):
            if isinstance(a, torch.Tensor) and len(b.shape) == 2 and self._small(a, b.shape[1]):
                add(self._const_left(a, b.rows, b.shape[1]))
            else:
                r, kept = _reduce(b.rows, b.shape, [len(b.shape) - 2])
                add(_broadcast(_Dep(r, kept, True), shape))
        return _Dep(_binary(total), shape, True)

    @staticmethod
    def _small(const: Any, times: int) -> bool:
        return const.dim() == 2 and int((const != 0).sum()) * max(times, 1) <= 50_000_000

    def _const_left(self, a: Any, rows_b: Any, n: int) -> Any:
        """A @ B with A known: out (i, j) reads B (k, j) where A[i, k] != 0."""
        import scipy.sparse as sp

        structure = sp.csr_matrix((a != 0).cpu().numpy())
        return (
            sp.kron(structure, sp.identity(n, dtype=bool, format="csr"), format="csr").astype(bool) @ rows_b
        )

    def _const_right(self, b: Any, rows_a: Any, m: int) -> Any:
        """A @ B with B known: out (i, j) reads A (i, k) where B[k, j] != 0."""
        import scipy.sparse as sp

        structure = sp.csr_matrix((b != 0).cpu().numpy().T)
        return (
            sp.kron(sp.identity(m, dtype=bool, format="csr"), structure, format="csr").astype(bool) @ rows_a
        )

    def _conv(self, args: Any, value: Any) -> Any:
        import itertools

        import numpy as np
        import scipy.sparse as sp
        import torch

        x, w, bias, stride, padding, dilation, transposed, _, groups = args[:9]
        shape = tuple(value.shape)
        out_numel = math.prod(shape)
        total = None

        def add(r: Any) -> None:
            nonlocal total
            total = r if total is None else total + r

        if isinstance(bias, _Dep):
            ids = torch.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2)).expand(shape)
            add(bias.rows[ids.reshape(-1).numpy()])
        w_shape = tuple(w.shape)
        if isinstance(w, _Dep):  # out (b, oc, p) reads all of weight[oc]
            per = math.prod(w_shape[1:])
            rows_w = _reduce(w.rows, (w_shape[0], per), [1])[0]
            ids = torch.arange(shape[1]).reshape((1, shape[1]) + (1,) * (len(shape) - 2)).expand(shape)
            add(rows_w[ids.reshape(-1).numpy()])
        if isinstance(x, _Dep):
            x_shape = tuple(x.shape)
            spatial = len(x_shape) - 2
            ids = _ids(x_shape, 0)
            pads = []
            for p in reversed(list(padding)):
                pads += [p, p]
            ids = torch.nn.functional.pad(ids, pads) if any(padding) else ids
            out_sp = shape[2:]
            taps = []
            kernel = w_shape[2:]
            for offs in itertools.product(*[range(k) for k in kernel]):
                sl = [slice(None), slice(None)]
                for d in range(spatial):
                    start = offs[d] * dilation[d]
                    sl.append(slice(start, start + (out_sp[d] - 1) * stride[d] + 1, stride[d]))
                taps.append(ids[tuple(sl)])
            k = len(taps)
            src = torch.stack(taps, 2)  # (B, C, K, *O)
            bsz, cin = x_shape[0], x_shape[1]
            cout = shape[1]
            cin_g, cout_g = cin // groups, cout // groups
            src = src.reshape(bsz, groups, 1, cin_g * k, *out_sp).expand(
                bsz, groups, cout_g, cin_g * k, *out_sp
            )
            rows = torch.arange(out_numel).reshape(bsz, groups, cout_g, 1, *out_sp).expand(src.shape)
            keep = src > 0
            if isinstance(w, torch.Tensor):  # a known weight: only its nonzero taps
                mask = (w != 0).reshape(groups, cout_g, cin_g * k)
                mask = mask.reshape(1, groups, cout_g, cin_g * k, *([1] * spatial)).expand(src.shape)
                keep = keep & mask
            r = rows[keep].numpy()
            c = (src[keep] - 1).round().to(torch.int64).numpy()
            m = sp.csr_matrix((np.ones(len(r), bool), (r, c)), shape=(out_numel, math.prod(x_shape)))
            add(m @ x.rows)
        if total is None:
            raise _NoRule
        return _Dep(_binary(total), shape, True)

    def _accumulate(self, target: Any, args: Any, kwargs: Any, value: Any) -> Any:
        """scatter_add, index_add, index_put (accumulate or not): self's element, or self's and
        every source element sent to it; the destinations come from the known indices."""
        import numpy as np
        import scipy.sparse as sp
        import torch

        name = target._overloadpacket.__name__
        shape = tuple(value.shape)
        out_numel = math.prod(shape)
        dest_ids = torch.arange(out_numel, dtype=torch.int64).reshape(shape)
        if name == "scatter" and not isinstance(args[3], (torch.Tensor, _Dep)):
            if isinstance(args[2], _Dep) or not isinstance(args[0], _Dep):
                raise _NoRule
            return _Dep(args[0].rows, shape, True)  # scatter.value: self's elements or a constant
        if name in ("scatter_add", "scatter_reduce", "scatter"):
            this, dim, index, src = args[0], args[1], args[2], args[3]
            if isinstance(index, _Dep):
                raise _NoRule
            dest = torch.gather(dest_ids, dim, index)
            src_shape = tuple(src.shape)
            region = tuple(slice(0, k) for k in index.shape)
            src_ids = torch.arange(math.prod(src_shape)).reshape(src_shape)[region]
        elif name == "index_add":
            this, dim, index, src = args[0], args[1], args[2], args[3]
            if isinstance(index, _Dep):
                raise _NoRule
            dest = dest_ids.index_select(dim, index)
            src_shape = tuple(src.shape)
            src_ids = torch.arange(math.prod(src_shape)).reshape(src_shape)
        else:  # index_put(self, indices, values, accumulate)
            this, indices, src = args[0], args[1], args[2]
            if any(isinstance(i, _Dep) for i in indices):
                raise _NoRule
            dest = dest_ids[tuple(slice(None) if i is None else i for i in indices)]
            src_shape = tuple(src.shape)
            src_ids = torch.arange(math.prod(src_shape)).reshape(src_shape).expand(dest.shape)
        if tuple(src_ids.shape) != tuple(dest.shape):
            raise _NoRule
        total = None
        if isinstance(this, _Dep):
            total = this.rows  # a superset where index_put overwrites: that is allowed
        if isinstance(src, _Dep):
            r = dest.reshape(-1).numpy()
            c = src_ids.reshape(-1).numpy()
            m = sp.csr_matrix((np.ones(len(r), bool), (r, c)), shape=(out_numel, math.prod(src_shape)))
            part = m @ src.rows
            total = part if total is None else total + part
        if total is None:
            raise _NoRule
        return _Dep(_binary(total), shape, True)

    def _fallback(self, target: Any, deps: list, value: Any) -> Any:
        import numpy as np
        import scipy.sparse as sp
        import torch

        self.fallbacks.add(str(getattr(target, "__name__", target)))
        union = None
        for d in deps:
            if d.floating:
                s = d.rows.indices
                union = s if union is None else np.union1d(union, s)
        union = np.unique(union) if union is not None else np.zeros(0, np.int32)
        values = value if isinstance(value, (tuple, list)) else [value]
        rows = []
        for v in values:
            numel = v.numel() if isinstance(v, torch.Tensor) else 1
            if numel * len(union) > MAX_FALLBACK_NNZ:
                raise InputError(
                    f"cannot detect the sparsity pattern: aten op {target} has no rule here and would make "
                    f"{numel} x {len(union)} entries; give the pattern with --sparsity P.npz"
                )
            indptr = np.arange(numel + 1, dtype=np.int64) * len(union)
            rows.append(
                sp.csr_matrix(
                    (np.ones(numel * len(union), bool), np.tile(union, numel), indptr), (numel, self.n)
                )
            )
        return self._wrap(value, rows)

    # -- second order --
    def _nonlinear(self, target: Any, args: Any, kwargs: Any) -> bool:
        t = _tables()
        name = getattr(getattr(target, "_overloadpacket", None), "__name__", "")
        dep = [isinstance(a, _Dep) and a.floating for a in args]
        if target in t["moves"] or target in t["to_copy"]:
            return False
        if name == "mul":
            return sum(dep) >= 2
        if name == "div":
            return len(dep) > 1 and dep[1]
        if target in t["matmuls"]:
            pos = (1, 2) if name in ("addmm", "baddbmm", "addmv", "addbmm") else (0, 1)
            return all(dep[p] for p in pos if p < len(dep))
        if target in t["convs"]:
            return dep[0] and dep[1]
        if target in t["linear"]:
            return False
        return True

    def _add_second(self, rows: Any) -> None:
        contribution = rows.T @ rows
        self.second = contribution if self.second is None else self.second + contribution
        self.second = _binary(self.second)


class _NoRule(Exception):
    """The op's rule does not cover this call: fall back."""
