"""One Jacobian block a chunk at a time: rows by reverse mode, columns by forward mode.

A block is d output-leaf / d one input, seen as the (output elements x input elements) matrix.
Reverse mode gives rows: ``out, pullback = torch.func.vjp(g, x)`` once, then
``vmap(pullback)`` over a chunk of one-hot cotangents. Forward mode gives columns:
``vmap(lambda v: jvp(g, (x,), (v,))[1])`` over a chunk of one-hot tangents. These are the
computations torch.func's jacrev and jacfwd run over all the one-hot vectors at once; here the
chunk bounds how many are alive together, so the peak memory is bounded too.

Routes and fallbacks follow :mod:`jaccli.autodiff.routing`: under ``--engine auto`` forward mode falls
back to reverse mode (no forward-mode formula, or forward mode's dtype promotion), and torch.func
to a loop of torch.autograd reverse passes (vmap cannot batch the function); ``--engine
autograd`` computes rows by that loop. The first chunk fixes the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from jaccli import trees
from jaccli.autodiff.transforms import JacobianInfo, guarded, settle_dtypes


@dataclass(frozen=True)
class ChunkRoute:
    mode: str  # fwd (columns) or rev (rows)
    engine: str  # func or autograd
    label: str


_ROUTES = {
    ("fwd", "func"): ChunkRoute("fwd", "func", "torch.func jvp over column chunks (forward mode)"),
    ("rev", "func"): ChunkRoute("rev", "func", "torch.func vjp over row chunks (reverse mode)"),
    ("rev", "autograd"): ChunkRoute("rev", "autograd", "a loop of reverse passes (torch.autograd)"),
}


def routes(mode: str, engine: str) -> list[ChunkRoute]:
    """The routes to try, in order, for a preferred mode under an engine."""
    if engine == "autograd":
        return [_ROUTES["rev", "autograd"]]
    order = [("fwd", "func")] if mode == "fwd" else []
    order += [("rev", "func")]
    chosen = [_ROUTES[key] for key in order]
    if engine == "func":
        return chosen[:1]
    return chosen + [_ROUTES["rev", "autograd"]]


class BlockJacobian:
    """Chunks of one block; ``passes`` is how many rows (reverse) or columns (forward) it has."""

    def __init__(
        self,
        fn: Callable[..., Any],
        primals: Sequence[Any],
        info: JacobianInfo,
        has_aux: bool,
        randomness: str,
    ):
        self.info = info
        self.randomness = randomness
        self.x = primals[info.input_index]
        self.n_out, self.n_in = info.matrix_shape
        self._primals = list(primals)
        self._fn, self._has_aux = fn, has_aux
        self.route: ChunkRoute | None = None
        self.dtype: Any = None
        self.fallbacks: list[str] = []
        self._pullback: Any = None

    def g(self, x: Any) -> Any:
        """The output leaf of this block as a function of its one input."""
        args = list(self._primals)
        args[self.info.input_index] = x
        result = self._fn(*args)
        output = result[0] if self._has_aux else result
        key = self.info.output_key.partition(".")[2]  # "output.a.0" -> "a.0"
        return dict(trees.leaves(output))[key]

    def passes(self, route: ChunkRoute | None = None) -> int:
        return self.n_in if (route or self.route).mode == "fwd" else self.n_out

    def choose(self, candidates: list[ChunkRoute]) -> Any:
        """Find the first route that works on a one-pass chunk; returns that chunk."""
        from jaccli.autodiff.routing import first_working

        def attempt(route: ChunkRoute) -> Any:
            self._pullback = None  # a failed route's graph is not the next one's
            return self._chunk(route, 0, min(1, self.passes(route)))

        self.route, block, failures = first_working(
            "jacobian", candidates, attempt, label=lambda r: r.label, forward=lambda r: r.mode == "fwd"
        )
        self.dtype = block.dtype  # what every chunk gives
        if failures:
            self.fallbacks.append(f"fell back to {self.route.label} ({'; '.join(failures)})")
        return block

    def restart(self) -> None:
        """Forget the forward pass, so that each whole computation pays for its own (as torch.func's)."""
        self._pullback = None

    def chunk(self, start: int, stop: int) -> Any:
        """Rows ``start:stop`` (reverse: shape (k, n_in)) or columns (forward: (k, n_out), transposed)."""
        return guarded(lambda: self._chunk(self.route, start, stop), "jacobian")

    def _chunk(self, route: ChunkRoute, start: int, stop: int) -> Any:
        import torch

        if route.engine == "autograd":
            return self._rows_by_autograd(start, stop)
        size = self.n_out if route.mode == "rev" else self.n_in
        basis = torch.zeros(stop - start, size, dtype=self.x.dtype, device=self.x.device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1
        if route.mode == "rev":
            if self._pullback is None:
                output, self._pullback = torch.func.vjp(self.g, self.x)
                self._output = output
            cotangents = basis.to(self._output.dtype).reshape(-1, *self.info.output_shape)
            (rows,) = torch.func.vmap(self._pullback)(cotangents)
            return rows.reshape(stop - start, self.n_in)
        tangents = basis.reshape(-1, *self.info.input_shape)

        def column(v: Any) -> Any:
            output, derivative = torch.func.jvp(self.g, (self.x,), (v,))
            return settle_dtypes(derivative, output, self._primals)

        columns = torch.func.vmap(column, randomness=self.randomness)(tangents)
        return columns.reshape(stop - start, self.n_out)

    def _rows_by_autograd(self, start: int, stop: int) -> Any:
        import torch

        if self._pullback is None:
            x = self.x.detach().requires_grad_(True)
            with torch.enable_grad():
                self._pullback = (x, self.g(x).reshape(-1))
        x, flat = self._pullback
        rows = []
        for k in range(start, stop):
            grad = None
            if flat.requires_grad:
                (grad,) = torch.autograd.grad(flat[k], x, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(x) if grad is None else grad)
        return torch.stack(rows).reshape(stop - start, self.n_in)
