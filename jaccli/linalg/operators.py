"""The Jacobian (or the Hessian) of a function as a matrix-free linear operator on flat vectors.

The function's differentiated inputs (``--argnums``, or every parameter under ``--wrt params``)
are flattened and concatenated into one vector of n entries; its outputs (a tensor, or a tuple,
list or dict of them) into one of m entries. J is then an m x n matrix known only through

- J^T.u (``rmatvec``): a backward pass (torch.autograd) of one evaluation of the function, kept;
- J.v  (``matvec``): the backward pass of that backward pass, which is linear in its cotangent
  (the double-backward trick): no new evaluation of the function, about 5x faster per product
  than torch.func.jvp on a stencil, and no torch.func import; forward mode (torch.func.jvp) where
  the backward has no derivative of its own, said in ``notes``.

The Hessian of a one-element function is its gradient's Jacobian, symmetric: H.v is a backward
pass of the gradient's graph (reverse over reverse, one evaluation kept).
Every product is counted, so a caller can say how many it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable

from jaccli import trees
from jaccli.autodiff.transforms import failure_reason, guarded


class Flat:
    """Tensors of given shapes <-> one 1-D vector (their entries in order, concatenated)."""

    def __init__(self, like: Sequence[Any]) -> None:
        self.shapes = [tuple(t.shape) for t in like]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)
        self.dtype = like[0].dtype
        self.device = like[0].device

    def join(self, tensors: Sequence[Any]) -> Any:
        import torch

        return torch.cat([t.reshape(-1) for t in tensors]) if len(tensors) > 1 else tensors[0].reshape(-1)

    def split(self, vector: Any) -> list:
        parts = vector.split(self.sizes) if len(self.sizes) > 1 else (vector,)
        return [p.reshape(s) for p, s in zip(parts, self.shapes)]


class Operator:
    """An m x n operator on flat float64 numpy vectors, counting the products it computes."""

    shape: tuple[int, int]
    symmetric = False

    def __init__(self) -> None:
        self.products = {"J.v": 0, "J^T.u": 0}
        self.notes: list[str] = []

    def matvec(self, v: Any) -> Any:
        raise NotImplementedError

    def rmatvec(self, u: Any) -> Any:
        raise NotImplementedError

    @property
    def used(self) -> int:
        return sum(self.products.values())

    def scipy(self) -> Any:
        """A scipy.sparse.linalg.LinearOperator over the same products."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.matvec, rmatvec=self.rmatvec, dtype=np.float64)

    def dense(self) -> Any:
        """The matrix, formed from min(m, n) products (columns J.e_j or rows e_i^T.J): tiny n only."""
        import numpy as np

        m, n = self.shape
        if n <= m:
            eye = np.eye(n)
            return np.stack([self.matvec(eye[j]) for j in range(n)], axis=1)
        eye = np.eye(m)
        return np.stack([self.rmatvec(eye[i]) for i in range(m)], axis=0)


def _reraise(exc: BaseException) -> Any:
    raise exc


def _to_numpy(t: Any) -> Any:
    import numpy as np

    return np.asarray(t.detach().to("cpu", dtype=_float64()).numpy(), dtype=np.float64).reshape(-1)


def _float64() -> Any:
    import torch

    return torch.float64


def selected(fn: Callable[..., Any], primals: Sequence[Any], wrt: Sequence[int]) -> Callable[..., Any]:
    """``fn`` as a function of the primals in ``wrt`` only, the others held fixed."""

    def g(*chosen: Any) -> Any:
        args = list(primals)
        for i, value in zip(wrt, chosen):
            args[i] = value
        return fn(*args)

    return g


class JacobianOperator(Operator):
    """J of ``fn`` at ``primals`` with respect to the primals in ``wrt``, outputs flattened.

    torch.autograd, on one graph built once: J^T.u is a backward pass of it, J.v the backward
    pass of that (linear) backward pass. No product evaluates the function again, and none pays
    torch.func's first-use import (about a second, see jaccli.pipeline.plan.IMPORT_TAX_S). Where the backward
    has no derivative of its own, J.v falls back to torch.func.jvp and says so.
    """

    def __init__(
        self, fn: Callable[..., Any], primals: Sequence[Any], wrt: Sequence[int], has_aux: bool
    ) -> None:
        super().__init__()
        import torch

        self._fn, self._primals, self._wrt, self._has_aux = fn, primals, tuple(wrt), has_aux
        self.inputs = Flat([primals[i] for i in wrt])
        self._x = [primals[i].detach().requires_grad_(True) for i in wrt]
        with torch.enable_grad():
            out = guarded(lambda: selected(fn, primals, wrt)(*self._x), "the function")
        if has_aux:
            out = out[0]
        leaves = [t for _, t in trees.leaves(out)]
        self.outputs = Flat(leaves)
        self._y = self.outputs.join(leaves)
        self.value = self._y.detach()
        self.shape = (self.outputs.size, self.inputs.size)
        self._u0: Any = None  # the placeholder cotangent of the double-backward trick
        self._g: Any = None  # J^T.u0, linear in u0
        self._forward = False

    def _grad(self, out: Any, wrt: Sequence[Any], seed: Any, create: bool = False) -> list:
        import torch

        if not out.requires_grad:  # nothing depends on the inputs: J = 0
            return [torch.zeros_like(w) for w in wrt]
        grads = torch.autograd.grad(
            out, list(wrt), seed, retain_graph=True, create_graph=create, allow_unused=True
        )
        return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt)]

    def rmatvec(self, u: Any) -> Any:
        import torch

        self.products["J^T.u"] += 1
        cot = torch.as_tensor(u.reshape(-1), dtype=self.outputs.dtype, device=self.outputs.device)
        return _to_numpy(
            self.inputs.join(guarded(lambda: self._grad(self._y, self._x, cot), "the function's vjp"))
        )

    def matvec(self, v: Any) -> Any:
        import torch

        self.products["J.v"] += 1
        tangent = torch.as_tensor(v.reshape(-1), dtype=self.inputs.dtype, device=self.inputs.device)
        if not self._forward:
            try:
                with torch.enable_grad():
                    if self._g is None:
                        self._u0 = torch.zeros_like(self._y, requires_grad=True)
                        self._g = self.inputs.join(self._grad(self._y, self._x, self._u0, create=True))
                    return _to_numpy(self._grad(self._g, [self._u0], tangent)[0])
            except Exception as exc:
                if failure_reason(exc) is None:
                    guarded(lambda exc=exc: _reraise(exc), "the function's vjp")
                self._forward = True
                self.notes.append(
                    f"J.v by forward mode (torch.func.jvp): the backward pass has no derivative ({exc})"
                )
        import torch.func as tf

        inner = selected(self._fn, self._primals, self._wrt)

        def flat(*chosen: Any) -> Any:
            out = inner(*chosen)
            return self.outputs.join([t for _, t in trees.leaves(out[0] if self._has_aux else out)])

        x = tuple(self._primals[i].detach() for i in self._wrt)
        return _to_numpy(
            guarded(lambda: tf.jvp(flat, x, tuple(self.inputs.split(tangent)))[1], "the function's jvp")
        )


class HessianOperator(Operator):
    """The Hessian of a one-element ``fn`` with respect to the primals in ``wrt``: H.v products,
    each a backward pass of the gradient's graph (torch.autograd, reverse over reverse)."""

    symmetric = True

    def __init__(
        self, fn: Callable[..., Any], primals: Sequence[Any], wrt: Sequence[int], has_aux: bool
    ) -> None:
        super().__init__()
        import torch

        self.products = {"H.v": 0}
        self.inputs = Flat([primals[i] for i in wrt])
        self._x = [primals[i].detach().requires_grad_(True) for i in wrt]
        self.shape = (self.inputs.size, self.inputs.size)

        def gradient() -> Any:
            with torch.enable_grad():
                out = selected(fn, primals, wrt)(*self._x)
                out = (out[0] if has_aux else out).reshape(())
                if not out.requires_grad:
                    return None
                grads = torch.autograd.grad(out, self._x, create_graph=True, allow_unused=True)
                return self.inputs.join(
                    [torch.zeros_like(w) if g is None else g for g, w in zip(grads, self._x)]
                )

        self._g = guarded(gradient, "the function's gradient")

    def matvec(self, v: Any) -> Any:
        import torch

        self.products["H.v"] += 1
        tangent = torch.as_tensor(v.reshape(-1), dtype=self.inputs.dtype, device=self.inputs.device)
        if self._g is None or not self._g.requires_grad:  # constant or linear: H = 0
            return _to_numpy(torch.zeros_like(tangent))

        def product() -> Any:
            grads = torch.autograd.grad(self._g, self._x, tangent, retain_graph=True, allow_unused=True)
            return self.inputs.join([torch.zeros_like(w) if g is None else g for g, w in zip(grads, self._x)])

        return _to_numpy(guarded(product, "the Hessian-vector product"))

    rmatvec = matvec
