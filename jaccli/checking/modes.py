"""The derivative engines ``jac check`` compares, each with its fallbacks.

Forward mode: torch.func.jvp, else ``torch.autograd.forward_ad`` (dual tensors).
Reverse mode: torch.func.vjp, else ``torch.autograd.grad`` (classic-style ``autograd.Function``
subclasses, ``forward(ctx, x)`` without ``setup_context``, work there).

A mode that no engine can run raises :class:`Unavailable` with the reasons; an error that is the
function's own (the same error from every engine) propagates, so it is reported as the function
raising (exit 3), never hidden.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from jaccli import trees


class Unavailable(Exception):
    """No engine could run this mode; ``str()`` says why."""


def flat_out(tree: Any) -> Any:
    import torch

    leaves = [t for _, t in trees.leaves(tree)]
    return torch.cat([t.reshape(-1) for t in leaves]) if leaves else torch.zeros(0)


def flat(tensors: Sequence[Any]) -> Any:
    import torch

    return torch.cat([t.reshape(-1) for t in tensors])


def _reason(exc: BaseException) -> str:
    from jaccli.errors import describe

    if "must override the setup_context" in str(exc):
        return (
            "a classic-style autograd.Function (forward(ctx, ...), no setup_context): "
            "torch.func cannot transform it"
        )
    if "does not have vmap support" in str(exc):
        return (
            "an autograd.Function without a vmap rule (give it a vmap staticmethod or "
            "generate_vmap_rule = True)"
        )
    return describe(exc)


_FALLBACKS = {"forward": "torch.autograd.forward_ad", "reverse": "torch.autograd"}


class Modes:
    """J·v and Jᵀ·u of ``f`` at ``primals``, by the first engine that works (remembered)."""

    def __init__(self, f: Callable[..., Any], primals: Sequence[Any], output: Any, randomness: str = "error"):
        self.f = f
        self.primals = tuple(primals)
        self.output = output
        self.randomness = randomness
        # per mode ("forward", "reverse"): the engine that ran it, once one has, or why none can
        self.engine: dict[str, str | None] = {"forward": None, "reverse": None}
        self.failure: dict[str, str | None] = {"forward": None, "reverse": None}
        self._pullback: Any = None
        self._graph: Any = None

    def jvp(self, v: Sequence[Any]) -> Any:
        """J·v, flat over the output leaves."""
        return self._first_that_runs("forward", self._func_jvp, self._dual_jvp, v)

    def vjp(self, u: Any) -> Any:
        """Jᵀ·u for an output-shaped cotangent tree ``u``, flat over the primals."""
        return self._first_that_runs("reverse", self._func_vjp, self._autograd_vjp, u)

    def _first_that_runs(self, mode: str, by_func: Callable, fallback: Callable, arg: Any) -> Any:
        """torch.func, else ``fallback``; the first engine that works is kept for later calls."""
        if self.failure[mode] is not None:
            raise Unavailable(self.failure[mode])
        if self.engine[mode] not in (None, "torch.func"):
            return fallback(arg)
        try:
            result = by_func(arg)
        except Exception as first:  # noqa: BLE001 - try the fallback before judging
            if self.engine[mode] == "torch.func":
                raise
            try:
                result = fallback(arg)
            except Exception as second:  # noqa: BLE001
                self._judge(first, second, mode)
                raise AssertionError("unreachable") from None
            self.engine[mode] = _FALLBACKS[mode]
            return result
        self.engine[mode] = "torch.func"
        return result

    def _func_jvp(self, v: Sequence[Any]) -> Any:
        import torch

        return flat_out(torch.func.jvp(self.f, self.primals, tuple(v))[1]).detach()

    def _dual_jvp(self, v: Sequence[Any]) -> Any:
        import torch
        import torch.autograd.forward_ad as fwad

        with fwad.dual_level():
            duals = [fwad.make_dual(p, d) for p, d in zip(self.primals, v)]
            out = self.f(*duals)
            parts = []
            for _, leaf in trees.leaves(out):
                tangent = fwad.unpack_dual(leaf).tangent
                parts.append((torch.zeros_like(leaf) if tangent is None else tangent).reshape(-1).clone())
        return torch.cat(parts).detach()

    def _func_vjp(self, u: Any) -> Any:
        import torch

        if self._pullback is None:
            _, self._pullback = torch.func.vjp(self.f, *self.primals)
        return flat(self._pullback(u)).detach()

    def _autograd_vjp(self, u: Any) -> Any:
        import torch

        if self._graph is None:
            leaves_in = [p.detach().clone().requires_grad_(True) for p in self.primals]
            with torch.enable_grad():
                out = self.f(*leaves_in)
            self._graph = (leaves_in, [t for _, t in trees.leaves(out)])
        leaves_in, outs = self._graph
        cot = [t for _, t in trees.leaves(u)]
        pairs = [(o, c) for o, c in zip(outs, cot) if o.requires_grad]
        if not pairs:
            return flat([torch.zeros_like(p) for p in leaves_in])
        grads = torch.autograd.grad(
            [o for o, _ in pairs], leaves_in, [c for _, c in pairs], retain_graph=True, allow_unused=True
        )
        return flat([torch.zeros_like(p) if g is None else g for p, g in zip(leaves_in, grads)]).detach()

    def _judge(self, first: BaseException, second: BaseException, mode: str) -> None:
        """Both engines failed: a mode torch cannot run (Unavailable), or the function's own error."""
        from jaccli.autodiff.transforms import failure_reason

        if failure_reason(first) is None and failure_reason(second) is None:
            raise first  # the function's (or its derivative's) own error
        why = f"{_reason(first)} (torch.func); {_reason(second)} ({_FALLBACKS[mode]})"
        self.failure[mode] = why
        raise Unavailable(why)

    # ---- whole Jacobians -----------------------------------------------------------------------
    def jacobian(self, mode: str) -> Any:
        """The (outputs x inputs) Jacobian by jacfwd/jacrev, else one jvp/vjp per column/row."""
        import torch

        every = tuple(range(len(self.primals)))
        try:
            if mode == "fwd":
                if self.engine["forward"] not in (None, "torch.func"):
                    raise RuntimeError("forward mode runs by forward_ad")
                jac = torch.func.jacfwd(self.f, argnums=every, randomness=self.randomness)(*self.primals)
            else:
                if self.engine["reverse"] not in (None, "torch.func"):
                    raise RuntimeError("reverse mode runs by torch.autograd")
                jac = torch.func.jacrev(self.f, argnums=every)(*self.primals)
            return _matrix(jac, self.output, len(self.primals))
        except Exception:  # noqa: BLE001 - the loop below uses the engines with their fallbacks
            pass
        if mode == "fwd":
            return torch.stack([self.jvp(d) for d in basis(self.primals)], dim=1)
        leaves = [t for _, t in trees.leaves(self.output)]
        return torch.stack([self.vjp(trees.unflatten(self.output, u)) for u in basis(leaves)], dim=0)


def _matrix(jacobian: Any, output: Any, n_primals: int) -> Any:
    """torch.func's Jacobian (output tree of per-primal blocks) as one (outputs x inputs) matrix."""
    import torch

    blocks = dict(trees.leaves(jacobian))
    rows = []
    for key, out in trees.leaves(output):
        parts = [blocks[trees.join(key, str(i))] for i in range(n_primals)]
        rows.append(torch.cat([b.reshape(out.numel(), -1) for b in parts], dim=1))
    return torch.cat(rows, dim=0)


def basis(tensors: Sequence[Any]):
    """Every one-hot direction over ``tensors`` together: zeros but a single 1, in flat order."""
    import torch

    for i, t in enumerate(tensors):
        for k in range(t.numel()):
            direction = [torch.zeros(q.shape, dtype=q.dtype, device=q.device) for q in tensors]
            direction[i].view(-1)[k] = 1
            yield direction
