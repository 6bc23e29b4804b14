"""Steady-state kernels: a chosen route again, with the generality stripped out.

The routes in :mod:`jaccli.autodiff.routing` handle every case (trees of outputs, aux, several argnums,
per-sample batches, dtype quirks) and so pay for it on each call: on a small function that
bookkeeping costs as much as the derivative. Once the first call has found the route and
its result, :func:`prepare` returns a closure doing only what the plain torch code would do,
for the common case: every primal a tensor, a single-tensor output, no aux, no batch
dimension, one argnum. For anything else it returns None and the route runs as it is.

Each kernel returns the same tree as its route, with the same numbers: the tests compare them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from jaccli.autodiff.engines import _grad


def prepare(route: Any, func: Callable[..., Any], primals: Sequence[Any], options: dict, first: dict) -> Any:
    """A zero-argument callable giving ``first``'s tree anew, or None where none applies."""
    import torch

    if options.get("has_aux") or not all(isinstance(p, torch.Tensor) for p in primals):
        return None
    # a single-tensor output: its jvp/vjp output, or (one argnum) its Jacobian, is one tensor
    if not isinstance(first.get("output", first.get("jacobian")), torch.Tensor):
        return None
    make = _KERNELS.get((route.command, route.engine))
    return make(func, list(primals), options, first) if make else None


def _leaves(primals: Sequence[Any]) -> list:
    return [p.detach().requires_grad_() for p in primals]


def _cast(first: Any) -> Callable[[Any], Any]:
    """Forward mode may widen a dtype (pytorch#90065): cast to what the first call settled on."""
    dtype = first.dtype
    return lambda t: t if t.dtype == dtype else t.to(dtype)


def _jvp_func(func, primals, options, first):
    import torch.func as tf

    tangents, cast = tuple(options["tangents"]), _cast(first["jvp"])

    def kernel():
        output, product = tf.jvp(func, tuple(primals), tangents)
        return {"output": output, "jvp": cast(product)}

    return kernel


def _jvp_forward(func, primals, options, first):
    import torch
    import torch.autograd.forward_ad as fwad

    tangents, cast = list(options["tangents"]), _cast(first["jvp"])

    def kernel():
        with fwad.dual_level():
            output, product = fwad.unpack_dual(func(*map(fwad.make_dual, primals, tangents)))
        return {"output": output, "jvp": cast(torch.zeros_like(output) if product is None else product)}

    return kernel


def _jvp_double_backward(func, primals, options, first):
    import torch

    inputs, tangents = _leaves(primals), list(options["tangents"])

    def kernel():
        with torch.enable_grad():
            output = func(*inputs)
            dummy = torch.zeros_like(output, requires_grad=True)
            transposed = _grad([output], inputs, [dummy], create_graph=True)  # Jᵀu, linear in u
            (product,) = _grad(transposed, [dummy], tangents, retain_graph=False)
        return {"output": output.detach(), "jvp": product.detach()}

    return kernel


def _vjp_func(func, primals, options, first):
    import torch.func as tf

    cotangent = options["cotangents"]

    def kernel():
        output, pullback = tf.vjp(func, *primals)
        return {"output": output, "vjp": tuple(pullback(cotangent))}

    return kernel


def _vjp_autograd(func, primals, options, first):
    import sys

    import torch

    from jaccli.autodiff.engines import _SYMBOLIC

    inputs, cotangent = _leaves(primals), options["cotangents"]
    if not isinstance(cotangent, torch.Tensor):
        return None
    grad, modules, grad_enabled, zeros_like = (
        torch.autograd.grad,
        sys.modules,
        torch.is_grad_enabled,
        torch.zeros_like,
    )

    def kernel():  # engines._grad for one output, inlined: its bookkeeping was 5-15% of a small vjp
        if grad_enabled():
            output = func(*inputs)
        else:
            with torch.enable_grad():
                output = func(*inputs)
        if not output.requires_grad:
            return {"output": output.detach(), "vjp": tuple(zeros_like(i) for i in inputs)}
        if _SYMBOLIC in modules:  # the same choice as engines._grad: grad_outputs once sympy is loaded
            grads = grad((output,), inputs, (cotangent,), allow_unused=True)
        else:
            grads = grad(((output * cotangent).sum(),), inputs, allow_unused=True)
        vjp = tuple(zeros_like(i) if g is None else g for g, i in zip(grads, inputs))
        return {"output": output.detach(), "vjp": vjp}

    return kernel


def _jacobian_func(transform_name: str):
    def make(func, primals, options, first):
        import torch.func as tf

        argnums = options.get("argnums", 0)
        if not isinstance(argnums, int):
            return None
        if transform_name == "jacrev":
            transform = tf.jacrev(func, argnums=argnums, chunk_size=options.get("chunk_size"))
        else:
            transform = tf.jacfwd(func, argnums=argnums, randomness=options.get("randomness", "error"))
        cast = _cast(first["jacobian"])
        return lambda: {"jacobian": cast(transform(*primals))}

    return make


def _wrt_one(primals: Sequence[Any], argnums: int) -> tuple[list, Any]:
    """Leaf copies of the primals, the ``argnums``-th requiring grad; and that one."""
    inputs = [p.detach().requires_grad_(i == argnums) for i, p in enumerate(primals)]
    return inputs, inputs[argnums]


def _jacobian_rows(func, primals, options, first):
    """One reverse pass per output element, as torch.autograd.functional.jacobian does."""
    import torch

    if not isinstance(options.get("argnums", 0), int):
        return None
    inputs, x = _wrt_one(primals, options.get("argnums", 0))

    def kernel():
        with torch.enable_grad():
            output = func(*inputs)
        if not output.requires_grad or output.numel() == 0 or x.numel() == 0:
            zeros = torch.zeros(output.shape + x.shape, dtype=first["jacobian"].dtype, device=output.device)
            return {"jacobian": zeros}
        if output.numel() == 1:  # a gradient: one pass, no indexing
            (row,) = torch.autograd.grad(output.reshape(()), x, allow_unused=True)
            row = torch.zeros_like(x) if row is None else row
            return {"jacobian": row.reshape(output.shape + x.shape)}
        flat = output.reshape(-1)
        rows = [
            torch.autograd.grad(flat[k], x, retain_graph=True, allow_unused=True)[0]
            for k in range(flat.numel())
        ]
        rows = [torch.zeros_like(x) if r is None else r for r in rows]
        return {"jacobian": torch.stack(rows).reshape(output.shape + x.shape)}

    return kernel


def _jacobian_batched(func, primals, options, first):
    """All rows in one batched reverse pass, the one-hot basis built once."""
    import torch

    if not isinstance(options.get("argnums", 0), int):
        return None
    (inputs, x), shape = _wrt_one(primals, options.get("argnums", 0)), first["jacobian"].shape
    output = func(*primals)
    if output.numel() == 0:
        return None
    basis = torch.eye(output.numel(), dtype=output.dtype, device=output.device).reshape(-1, *output.shape)

    def kernel():
        with torch.enable_grad():
            output = func(*inputs)
        (block,) = torch.autograd.grad(output, x, basis, is_grads_batched=True, allow_unused=True)
        return {"jacobian": torch.zeros(shape, dtype=output.dtype) if block is None else block.reshape(shape)}

    return kernel


_KERNELS: dict[tuple[str, str], Callable[..., Any]] = {
    ("jvp", "func"): _jvp_func,
    ("jvp-fwd", "autograd"): _jvp_forward,
    ("jvp", "autograd"): _jvp_double_backward,
    ("vjp", "func"): _vjp_func,
    ("vjp", "autograd"): _vjp_autograd,
    ("jacrev", "func"): _jacobian_func("jacrev"),
    ("jacfwd", "func"): _jacobian_func("jacfwd"),
    ("jacrev", "autograd"): _jacobian_rows,
    ("jacrev-batched", "autograd"): _jacobian_batched,
}
