"""Which machinery computes a request, and what happens when it cannot.

``--engine func`` runs torch.func only and ``--engine autograd`` torch.autograd only; neither
falls back. ``--engine auto`` (the default) walks a short list of routes for the command and
takes the first that works, but only past failures that another route can avoid:

- an operator with no forward-mode formula ("Trying to use forward AD with X", a custom
  autograd.Function without ``jvp``): jvp goes to the double-backward trick, jacfwd to reverse
  mode, hessian to reverse over reverse, hvp to reverse over reverse;
- a function vmap cannot batch (``.item()``, data-dependent control flow, in-place on an
  unbatched tensor): jacobians go to a loop of reverse passes, ``--batch-dim`` to a loop
  over samples;
- a missing double-backward formula: jvp goes to the reverse Jacobian times v.

Any other exception is the function's own and is reported as such (exit 3), never retried.
The first call finds the route; the steady-state runs reuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from jaccli import trees
from jaccli.errors import FunctionError, describe
from jaccli.transforms import compute_raw, failure_reason, guarded

ENGINES = ("auto", "func", "autograd")


@dataclass(frozen=True)
class Route:
    command: str  # what compute_raw runs: jvp, vjp, jacfwd, jacrev, hessian, hessian-rev, hvp, jvp-rev
    engine: str  # func or autograd
    label: str  # for the timing table: what ran


ROUTES: dict[str, list[Route]] = {
    "jvp": [
        Route("jvp", "func", "torch.func.jvp"),
        Route("jvp", "autograd", "double-backward trick (torch.autograd)"),
        Route("jvp-rev", "autograd", "reverse-mode Jacobian times v (torch.autograd)"),
    ],
    "vjp": [Route("vjp", "func", "torch.func.vjp"), Route("vjp", "autograd", "torch.autograd.grad")],
    "jacfwd": [
        Route("jacfwd", "func", "torch.func.jacfwd"),
        Route("jacrev", "func", "torch.func.jacrev (reverse mode)"),
        Route("jacrev", "autograd", "a loop of reverse passes (torch.autograd)"),
    ],
    "jacrev": [
        Route("jacrev", "func", "torch.func.jacrev"),
        Route("jacrev", "autograd", "a loop of reverse passes (torch.autograd)"),
    ],
    "hessian": [
        Route("hessian", "func", "torch.func jacfwd(jacrev) (forward over reverse)"),
        Route("hessian-rev", "func", "torch.func jacrev(jacrev) (reverse over reverse)"),
        Route("hessian", "autograd", "a loop of double-backward passes (torch.autograd)"),
    ],
    "hvp": [
        Route("hvp", "func", "torch.func jvp of grad (forward over reverse)"),
        Route("hvp", "autograd", "reverse over reverse (torch.autograd)"),
    ],
}


FORWARD_ROUTES = ("jvp", "jacfwd", "hessian", "hvp")


def _forward_dtype_bug(route: Route, exc: BaseException) -> bool:
    """A dtype mismatch in forward mode only: the function itself ran with these inputs, so this
    is forward mode promoting a tangent (pytorch#90065), which reverse mode does not do."""
    return route.engine == "func" and route.command in FORWARD_ROUTES and "dtype" in str(exc).lower()


_WHY = {
    "forward-dtype": "forward mode promoted a dtype (pytorch#90065)",
    "forward": "an operator has no forward-mode formula",
    "vmap": "vmap cannot batch the function",
    "functorch": "torch.func cannot transform the function",
    "missing": "a derivative formula is missing",
}


@dataclass
class Router:
    """Runs one command by the first route that works, then keeps to it."""

    command: str
    engine: str
    func: Callable[..., Any]
    primals: Sequence[Any]
    options: dict[str, Any]  # tangents, cotangents, argnums, has_aux, chunk_size, randomness
    batch_dim: int | None = None
    chosen: tuple[Route, bool] | None = None  # the route, and whether samples are looped
    fallbacks: list[str] = field(default_factory=list)

    def candidates(self) -> list[tuple[Route, bool]]:
        routes = ROUTES[self.command]
        if self.engine != "auto":
            routes = [r for r in routes if r.engine == self.engine][:1]
        if self.batch_dim is None:
            return [(route, False) for route in routes]
        candidates = []
        for route in routes:
            if route.engine == "autograd":
                candidates.append((route, True))  # autograd cannot run inside vmap: loop over samples
            else:
                candidates.append((route, False))
                if self.engine == "auto":
                    candidates.append((route, True))
        return candidates

    def __call__(self) -> dict[str, Any]:
        if self.chosen is not None:
            return guarded(lambda: self._run(*self.chosen), self.command)
        failures: list[str] = []
        candidates = self.candidates()
        for n, (route, loop) in enumerate(candidates):
            try:
                result = self._run(route, loop)
            except FunctionError:
                raise
            except (Exception, SystemExit) as exc:
                why = failure_reason(exc) if not isinstance(exc, SystemExit) else None
                if why is None and _forward_dtype_bug(route, exc):
                    why = "forward-dtype"
                if why is None or n == len(candidates) - 1:
                    if failures:
                        raise FunctionError(
                            f"{self.command} failed by every route ({'; '.join(failures)}); last, "
                            f"{route.label} raised {describe(exc)}"
                        ) from exc
                    guarded(lambda exc=exc: _reraise(exc), self.command)
                failures.append(f"{route.label}: {_WHY[why]}")
                continue
            self.chosen = (route, loop)
            if failures:
                how = route.label + (", looping over samples" if loop else "")
                self.fallbacks.append(f"fell back to {how} ({'; '.join(failures)})")
            return result
        raise AssertionError("no candidate routes")  # ROUTES always has one

    @property
    def label(self) -> str:
        if self.chosen is None:
            return "?"
        route, loop = self.chosen
        if self.batch_dim is None:
            return route.label
        return route.label + (" per sample (loop)" if loop else " per sample (vmap)")

    def run_chosen(self, primals: Sequence[Any], options: dict[str, Any]) -> dict[str, Any]:
        """The chosen route on other tensors of the same layout (``--compile`` traces this)."""
        if self.chosen is None:
            raise AssertionError("run_chosen before the first call chose a route")
        return replace(self, primals=primals, options=options, fallbacks=[])._run(*self.chosen)

    def _run(self, route: Route, loop: bool) -> dict[str, Any]:
        def one(*primals: Any, **batched: Any) -> dict[str, Any]:
            options = {**self.options, **batched}
            if route.command == "jvp-rev":
                return _jvp_by_reverse(self.func, primals, options)
            return compute_raw(route.command, self.func, primals, engine=route.engine, **options)

        if self.batch_dim is None:
            return one(*self.primals)
        return per_sample(one, self.primals, self.options, self.batch_dim, loop)


def _reraise(exc: BaseException) -> None:
    raise exc


def _jvp_by_reverse(
    func: Callable[..., Any], primals: Sequence[Any], options: dict[str, Any]
) -> dict[str, Any]:
    """J·v as the reverse-mode Jacobian contracted with v: needs first derivatives only."""
    import torch

    has_aux = options.get("has_aux", False)
    every = tuple(range(len(primals)))
    tree = compute_raw("jacrev", func, primals, argnums=every, has_aux=has_aux, engine="autograd")
    blocks = dict(trees.leaves(tree["jacobian"]))  # keys "<output leaf>.<primal index>"
    output = func(*primals)
    output = output[0] if has_aux else output
    products = [
        sum(
            torch.tensordot(blocks[trees.join(key, str(i))], v, dims=v.dim())
            for i, v in enumerate(options["tangents"])
        )
        for key, _ in trees.leaves(output)
    ]
    result = {
        "output": trees.map_leaves(lambda t: t.detach(), output),
        "jvp": trees.unflatten(output, products),
    }
    if has_aux:
        result["aux"] = tree["aux"]
    return result


def evaluate(func: Callable[..., Any], primals: Sequence[Any], batch_dim: int | None, engine: str) -> Any:
    """``func(*primals)``, per sample along ``batch_dim`` when given (vmap, else a loop)."""
    if batch_dim is None:
        return func(*primals)

    def one(*args: Any) -> dict[str, Any]:
        return {"value": func(*args)}

    if engine != "autograd":
        try:
            return per_sample(one, primals, {}, batch_dim, loop=False)["value"]
        except Exception as exc:
            if engine == "func" or failure_reason(exc) is None:
                raise
    return per_sample(one, primals, {}, batch_dim, loop=True)["value"]


def per_sample(
    one: Callable[..., dict[str, Any]],
    primals: Sequence[Any],
    options: dict[str, Any],
    batch_dim: int,
    loop: bool,
) -> dict[str, Any]:
    """``one`` per sample along ``batch_dim`` of every primal (and tangent); results batch-first.

    Tangents share the primals' layout (batch at ``batch_dim``); cotangents match the batched
    output, batch first. By vmap, or by a Python loop when vmap cannot batch the function.
    """
    batched = {k: options[k] for k in ("tangents", "cotangents") if options.get(k) is not None}
    dims = {"tangents": batch_dim, "cotangents": 0}
    if not loop:
        import torch.func as tf

        def sample(*args: Any) -> dict[str, Any]:
            primal_args = args[: len(primals)]
            rest = dict(zip(batched, args[len(primals) :]))
            return one(*primal_args, **rest)

        in_dims = (batch_dim,) * len(primals) + tuple(_dims_like(batched[k], dims[k]) for k in batched)
        return tf.vmap(sample, in_dims=in_dims, randomness=options.get("randomness", "error"))(
            *primals, *batched.values()
        )
    import torch

    size = primals[0].shape[batch_dim]
    results = []
    for b in range(size):
        picked = {
            k: trees.map_leaves(lambda t, d=dims[k], b=b: t.select(d, b), v) for k, v in batched.items()
        }
        results.append(one(*(p.select(batch_dim, b) for p in primals), **picked))
    flat = [dict(trees.leaves(r)) for r in results]
    stacked = [torch.stack([f[key] for f in flat]) for key in flat[0]]
    return trees.unflatten(results[0], stacked)


def _dims_like(tree: Any, dim: int) -> Any:
    return trees.map_leaves(lambda _t: dim, tree)
