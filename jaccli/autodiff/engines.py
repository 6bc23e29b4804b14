"""The torch.autograd engine: transforms without torch.func's wrapping and without vmap.

These are the fallbacks when torch.func cannot run a function (an operator with no
forward-mode formula, a function vmap cannot batch), what ``--engine autograd`` uses, and the
fast routes ``--engine auto`` picks when torch.func's fixed costs would dominate:

- jvp by the double-backward trick: g(u) = Jᵀu is linear in u, so J·v = ∂⟨g(u), v⟩/∂u;
- vjp by one backward pass;
- Jacobians and Hessians row by row, one backward pass per output element (a loop), or
  Jacobians by one batched backward pass (``is_grads_batched``);
- hvp by reverse over reverse;
- jvp by forward-mode AD on dual tensors (only as a route of ``--engine auto``).

Each takes ``func`` returning ``(output, aux)`` (aux may be None) and gives the same dict tree
as :func:`jaccli.autodiff.transforms.compute`, so callers cannot tell engines apart by their results.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

from jaccli import trees

Split = Callable[..., "tuple[Any, Any]"]  # func(*primals) -> (output, aux)
Argnums = Union[int, "tuple[int, ...]"]


def _forward(func: Split, primals: Sequence[Any], wrt: Sequence[int]) -> tuple[list, Any, Any]:
    import torch

    inputs = [p.detach().requires_grad_(i in wrt) for i, p in enumerate(primals)]
    with torch.enable_grad():
        output, aux = func(*inputs)
    return inputs, output, aux


# torch.autograd.grad checks grad_outputs' shapes with torch.fx's symbolic shapes, whose first
# use in a process imports sympy (about a second): most of a one-shot run's cost.
_SYMBOLIC = "torch.fx.experimental.symbolic_shapes"


def _grad(
    outputs: Sequence[Any],
    inputs: Sequence[Any],
    cotangents: Sequence[Any | None],
    create_graph=False,
    retain_graph=True,
):
    """Σ ⟨cotangent, ∂output/∂input⟩ for each input, zeros where no path leads (never None).

    A cotangent of None stands for ones. Until sympy is loaded (see _SYMBOLIC) the cotangents
    enter through the scalar Σ ⟨output, cotangent⟩ rather than as ``grad_outputs``: its gradient
    with respect to each output is the cotangent exactly, so the numbers are the same. Once it
    is loaded (a timed trial loads it), ``grad_outputs`` is the cheaper way per call.
    """
    import sys

    import torch

    pairs = [(o, c) for o, c in zip(outputs, cotangents) if o.requires_grad]
    grads = [None] * len(inputs)
    if pairs:
        options = dict(
            retain_graph=retain_graph or create_graph, create_graph=create_graph, allow_unused=True
        )
        if _SYMBOLIC in sys.modules:
            outs = [o.sum() if c is None else o for o, c in pairs]
            grads = torch.autograd.grad(outs, list(inputs), [c for _, c in pairs], **options)
        else:
            total = sum(o.sum() if c is None else (o * c).sum() for o, c in pairs)
            grads = torch.autograd.grad(total, list(inputs), **options)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(grads, inputs)]


def _detach(tree: Any) -> Any:
    import torch

    return trees.map_leaves(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, tree)


def _with_aux(tree: dict[str, Any], aux: Any, has_aux: bool) -> dict[str, Any]:
    if has_aux:
        tree["aux"] = _detach(aux)
    return tree


def jvp(func: Split, primals: Sequence[Any], tangents: Sequence[Any], has_aux: bool) -> dict[str, Any]:
    """J·v by the double-backward trick (what torch.autograd.functional.jvp does)."""
    import torch

    inputs, output, aux = _forward(func, primals, range(len(primals)))
    outs = [t for _, t in trees.leaves(output)]
    with torch.enable_grad():
        dummies = [torch.zeros_like(o, requires_grad=True) for o in outs]
        transposed = _grad(outs, inputs, dummies, create_graph=True)  # Jᵀu, linear in u
        results = _grad(transposed, dummies, list(tangents))
    return _with_aux(
        {"output": _detach(output), "jvp": trees.unflatten(output, [r.detach() for r in results])},
        aux,
        has_aux,
    )


def jvp_forward(
    func: Split, primals: Sequence[Any], tangents: Sequence[Any], has_aux: bool
) -> dict[str, Any]:
    """J·v by forward-mode AD on dual tensors (torch.autograd.forward_ad), without torch.func's
    wrapping: the same formulas as torch.func.jvp at a fraction of its fixed cost per call."""
    import torch
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        duals = [fwad.make_dual(p, t) for p, t in zip(primals, tangents)]
        output, aux = func(*duals)
        unpacked = [fwad.unpack_dual(t) for _, t in trees.leaves(output)]
        if has_aux:
            aux = trees.map_leaves(
                lambda t: fwad.unpack_dual(t).primal if isinstance(t, torch.Tensor) else t, aux
            )
    values = [u.primal for u in unpacked]
    products = [torch.zeros_like(u.primal) if u.tangent is None else u.tangent for u in unpacked]
    return _with_aux(
        {"output": trees.unflatten(output, values), "jvp": trees.unflatten(output, products)}, aux, has_aux
    )


def vjp(func: Split, primals: Sequence[Any], cotangents: Any, has_aux: bool) -> dict[str, Any]:
    """uᵀJ for every primal, by one backward pass."""
    inputs, output, aux = _forward(func, primals, range(len(primals)))
    outs = [t for _, t in trees.leaves(output)]
    cots = [t for _, t in trees.leaves(cotangents)]
    grads = _grad(outs, inputs, cots)
    return _with_aux({"output": _detach(output), "vjp": tuple(g.detach() for g in grads)}, aux, has_aux)


def _rows(outs: Sequence[Any], inputs: Sequence[Any], create_graph=False) -> list[list[Any]]:
    """For each output tensor and each input: the Jacobian block, one backward pass per row."""
    import torch

    blocks = []
    for out in outs:
        flat = out.reshape(-1)
        rows: list[list[Any]] = [[] for _ in inputs]
        for k in range(flat.numel()):
            for i, g in enumerate(_grad([flat[k]], inputs, [None], create_graph)):
                rows[i].append(g)
        blocks.append(
            [
                torch.stack(r).reshape(out.shape + inp.shape)
                if r
                else torch.zeros(out.shape + inp.shape, dtype=out.dtype, device=out.device)
                for r, inp in zip(rows, inputs)
            ]
        )
    return blocks


def jacobian(func: Split, primals: Sequence[Any], argnums: Argnums, has_aux: bool) -> dict[str, Any]:
    """The Jacobian by reverse mode, row by row (no vmap, so any function autograd handles)."""
    many = not isinstance(argnums, int)
    args = argnums if many else (argnums,)
    inputs, output, aux = _forward(func, primals, args)
    outs = [t for _, t in trees.leaves(output)]
    blocks = _rows(outs, [inputs[a] for a in args])
    values = [tuple(b.detach() for b in block) if many else block[0].detach() for block in blocks]
    return _with_aux({"jacobian": trees.unflatten(output, values)}, aux, has_aux)


def jacobian_batched(func: Split, primals: Sequence[Any], argnums: Argnums, has_aux: bool) -> dict[str, Any]:
    """The Jacobian by one batched reverse pass per output: the rows' one-hot cotangents go
    through the backward graph together (``is_grads_batched``, as
    torch.autograd.functional.jacobian(vectorize=True) does)."""
    import torch

    many = not isinstance(argnums, int)
    args = argnums if many else (argnums,)
    inputs, output, aux = _forward(func, primals, args)
    chosen = [inputs[a] for a in args]
    blocks = []
    for _, out in trees.leaves(output):
        grads: Sequence[Any] = [None] * len(chosen)
        if out.requires_grad and out.numel():
            basis = torch.eye(out.numel(), dtype=out.dtype, device=out.device).reshape(-1, *out.shape)
            grads = torch.autograd.grad(
                out, chosen, basis, retain_graph=True, is_grads_batched=True, allow_unused=True
            )
        blocks.append(
            [
                torch.zeros(out.shape + x.shape, dtype=out.dtype, device=out.device)
                if g is None
                else g.reshape(out.shape + x.shape).detach()
                for g, x in zip(grads, chosen)
            ]
        )
    values = [tuple(block) if many else block[0] for block in blocks]
    return _with_aux({"jacobian": trees.unflatten(output, values)}, aux, has_aux)


def hessian(func: Split, primals: Sequence[Any], argnums: Argnums, has_aux: bool) -> dict[str, Any]:
    """The Hessian of a one-element output by reverse over reverse, row by row."""
    import torch

    many = not isinstance(argnums, int)
    args = argnums if many else (argnums,)
    inputs, output, aux = _forward(func, primals, args)
    chosen = [inputs[a] for a in args]
    with torch.enable_grad():
        grads = _grad([output], chosen, [None], create_graph=True)
        blocks = _rows(grads, chosen)
    if many:
        value = tuple(tuple(b.detach() for b in row) for row in blocks)
    else:
        value = blocks[0][0].detach()
    return _with_aux({"hessian": value}, aux, has_aux)


def hvp(func: Split, primals: Sequence[Any], tangents: Sequence[Any], has_aux: bool) -> dict[str, Any]:
    """f(x), ∇f(x) and the Hessian-vector product H·v, by reverse over reverse."""
    import torch

    inputs, output, aux = _forward(func, primals, range(len(primals)))
    with torch.enable_grad():
        grads = _grad([output], inputs, [None], create_graph=True)
        products = _grad(grads, inputs, list(tangents))
    one = len(primals) == 1
    return _with_aux(
        {
            "output": output.detach(),
            "grad": grads[0].detach() if one else tuple(g.detach() for g in grads),
            "hvp": products[0].detach() if one else tuple(p.detach() for p in products),
        },
        aux,
        has_aux,
    )
