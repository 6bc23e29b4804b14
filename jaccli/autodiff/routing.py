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
from jaccli.autodiff.transforms import compute_raw, failure_reason, guarded
from jaccli.errors import FunctionError, describe

ENGINES = ("auto", "func", "autograd")


@dataclass(frozen=True)
class Route:
    command: str  # what runs: a command, or hessian-rev, jvp-rev, jvp-fwd, jacrev-batched
    engine: str  # func or autograd
    label: str  # for the timing table: what ran
    # Its first use in a process imports about a second of torch's modules: torch.func imports
    # torch._dynamo, forward-mode AD scripts its decompositions. Plain reverse mode imports nothing.
    taxed: bool = False
    loop: bool = False  # one pass per output (or input) element: its cost grows with the size
    last_resort: bool = False  # tried only when no other route works (a trial does not time it)


_REVERSE_LOOP = Route(  # jacfwd falls back to it too
    "jacrev", "autograd", "a loop of reverse passes (torch.autograd)", loop=True
)
ROUTES: dict[str, list[Route]] = {
    "jvp": [
        Route("jvp", "func", "torch.func.jvp", taxed=True),
        Route("jvp", "autograd", "double-backward trick (torch.autograd)"),
        Route("jvp-fwd", "autograd", "forward-mode AD (torch.autograd.forward_ad)", taxed=True),
        Route(
            "jvp-rev",
            "autograd",
            "reverse-mode Jacobian times v (torch.autograd)",
            loop=True,
            last_resort=True,
        ),
    ],
    "vjp": [
        Route("vjp", "func", "torch.func.vjp", taxed=True),
        Route("vjp", "autograd", "torch.autograd.grad"),
    ],
    "jacfwd": [
        Route("jacfwd", "func", "torch.func.jacfwd", taxed=True),
        Route("jacrev", "func", "torch.func.jacrev (reverse mode)", taxed=True),
        _REVERSE_LOOP,
    ],
    "jacrev": [
        Route("jacrev", "func", "torch.func.jacrev", taxed=True),
        _REVERSE_LOOP,
        Route("jacrev-batched", "autograd", "batched reverse passes (torch.autograd)", taxed=True),
    ],
    "hessian": [
        Route("hessian", "func", "torch.func jacfwd(jacrev) (forward over reverse)", taxed=True),
        Route("hessian-rev", "func", "torch.func jacrev(jacrev) (reverse over reverse)", taxed=True),
        Route("hessian", "autograd", "a loop of double-backward passes (torch.autograd)", loop=True),
    ],
    "hvp": [
        Route("hvp", "func", "torch.func jvp of grad (forward over reverse)", taxed=True),
        Route("hvp", "autograd", "reverse over reverse (torch.autograd)"),
    ],
}

FORWARD_ROUTES = ("jvp", "jvp-fwd", "jacfwd", "hessian", "hvp")


_WHY = {
    "forward-dtype": "forward mode promoted a dtype (pytorch#90065)",
    "forward": "an operator has no forward-mode formula",
    "vmap": "vmap cannot batch the function",
    "functorch": "torch.func cannot transform the function",
    "missing": "a derivative formula is missing",
    "internal": "PyTorch failed inside its own machinery on this route",
}


@dataclass
class Router:
    """Runs one command by the first route that works, or the fastest (``trial``), then keeps to it.

    ``commands`` lists what may answer: the command itself, or both jacrev and jacfwd for
    ``jac jacobian --mode auto``. With ``untaxed_first`` (one-shot runs of ``--engine auto``)
    routes that import nothing heavy go first, loops only when ``loop_ok`` says they are cheap.
    With ``trial`` every route that works is run and timed, and the fastest kept.
    """

    command: str
    engine: str
    func: Callable[..., Any]
    primals: Sequence[Any]
    options: dict[str, Any]  # tangents, cotangents, argnums, has_aux, chunk_size, randomness
    batch_dim: int | None = None
    commands: tuple[str, ...] = ()  # default: (command,)
    fallback_commands: tuple[str, ...] = ()  # their routes come last, only when the others fail
    untaxed_first: bool = False
    loop_ok: bool = True
    trial: bool = False
    sync: Callable[[], None] = lambda: None
    chosen: tuple[Route, bool] | None = None  # the route, and whether samples are looped
    fallbacks: list[str] = field(default_factory=list)
    timed: dict[str, float] = field(default_factory=dict)  # trial: route label -> best seconds
    kernel: Callable[[], dict[str, Any]] | None = None  # the chosen route, stripped (jaccli.autodiff.kernels)
    # the function's output is free of NaN and infinity: a derivative that is not, from one
    # route, is checked against the next (jaccli.autodiff.trust)
    output_finite: bool = True
    remarks: list[str] = field(default_factory=list)  # what the routes agreed on (not a fallback)

    def candidates(self) -> list[tuple[Route, bool]]:
        routes: list[Route] = []
        for command in (*(self.commands or (self.command,)), *self.fallback_commands):
            mine = ROUTES[command]
            if self.engine != "auto":
                mine = [r for r in mine if r.engine == self.engine][:1]
            routes += [
                r for r in mine if (r.command, r.engine) not in {(o.command, o.engine) for o in routes}
            ]
        if self.untaxed_first:
            routes.sort(key=lambda r: 1 if r.taxed or r.last_resort or (r.loop and not self.loop_ok) else 0)
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
            return guarded(self.kernel or (lambda: self._run(*self.chosen)), self.command)
        if self.trial:
            return self._trial()
        failures: list[str] = []
        candidates = self.candidates()
        suspect: list[tuple[tuple[Route, bool], dict[str, Any]]] = []  # gave NaN/Inf (see _suspect)
        first_error: FunctionError | None = None
        spares = self._spares(candidates)  # tried only after a NaN (--engine func or autograd)
        n = -1
        while n + 1 < len(candidates):
            n += 1
            candidate = candidates[n]
            if suspect and not self._worth_a_retry(candidate[0]):
                continue
            rest = candidates[n + 1 :] + spares
            try:
                result = self._attempt(candidate, failures, last=n == len(candidates) - 1 and not suspect)
            except FunctionError as exc:
                if not (suspect or self._may_avoid(candidate, rest, exc)):
                    raise exc if first_error is None else first_error  # noqa: B904 (its own cause)
                first_error = first_error or exc
                failures.append(f"{self._label(*candidate)}: {exc}")
                continue
            if result is FAILED:
                continue
            if self._suspect(result):
                suspect.append((candidate, result))
                if any(self._worth_a_retry(c[0]) for c in rest):
                    candidates, spares = candidates + spares, []
                    continue
                return self._keep(*suspect[0], failures, suspect)
            return self._keep(candidate, result, failures, suspect)
        if suspect:
            return self._keep(*suspect[0], failures, suspect)
        if first_error is not None:
            raise first_error
        raise AssertionError("no candidate routes")  # ROUTES always has one

    def _spares(self, candidates: list[tuple[Route, bool]]) -> list[tuple[Route, bool]]:
        """Under --engine func or autograd: that engine's other routes, for a NaN check only."""
        if self.engine == "auto" or self.batch_dim is not None:
            return []
        routes = [r for c in self.commands or (self.command,) for r in ROUTES[c] if r.engine == self.engine]
        taken = {c[0] for c in candidates}
        return [(r, False) for r in routes if r not in taken and self._worth_a_retry(r)]

    def _keep(self, candidate, result, failures: list[str], suspect: list) -> dict[str, Any]:
        self.chosen = candidate
        self.kernel = self._prepare(candidate, result)
        self._note_fallback(failures)
        self._note_suspect(suspect)
        return result

    def _may_avoid(
        self, candidate: tuple[Route, bool], rest: Sequence[tuple[Route, bool]], exc: Exception
    ) -> bool:
        """Whether a route still to try may avoid what failed in this one, though the failure does
        not say so (the function ran on its own, in the first call):

        - jac jacobian: a route of the other mode (forward, reverse), e.g. past a random op under vmap;
        - a torch.func route, when torch.autograd's are still to try: vmap and functorch can fail
          inside PyTorch's own batching rules (masked_select's backward under vmap) where a plain
          pass does not. Not past ``--randomness error``: that refusal is asked for.
        """
        if self.command == "jacobian":
            forward = candidate[0].command == "jacfwd"
            if any((r.command == "jacfwd") != forward for r, _ in rest):
                return True
        if "randomness" in str(exc).lower():
            return False
        return candidate[0].engine == "func" and any(r.engine == "autograd" for r, _ in rest)

    def _suspect(self, result: dict[str, Any]) -> bool:
        """A derivative with NaN or infinity where the function's output has none: a trick route
        (the double-backward trick at a zero cotangent) can give that where others do not."""
        from jaccli.autodiff.trust import non_finite

        return self.output_finite and non_finite(result)

    def _worth_a_retry(self, route: Route) -> bool:
        return not route.loop or self.loop_ok

    def _note_suspect(self, suspect: list) -> None:
        if not suspect:
            return
        tried = ", ".join(self._label(*c) for c, _ in suspect)
        if self.chosen == suspect[0][0]:
            self.remarks.append(
                f"gives NaN or infinity where the function's output is finite, by every route tried ({tried})"
            )
        else:
            self.fallbacks.append(
                f"answered by {self.label}: {tried} gave NaN or infinity where the function's output "
                "is finite"
            )

    def _attempt(self, candidate: tuple[Route, bool], failures: list[str], last: bool) -> Any:
        route = candidate[0]
        forward = route.command in FORWARD_ROUTES and (route.engine == "func" or route.command == "jvp-fwd")
        return attempt(self.command, lambda: self._run(*candidate), route.label, forward, failures, last)

    def _trial(self) -> dict[str, Any]:
        """Run every route that works once (the warm-up: lazy imports, caches), time each a few
        times, alternating so that load hits them all, and keep the fastest. Loops run only when
        ``loop_ok``, last resorts only when nothing else works."""
        candidates = self.candidates()  # the first is the command's own route
        ordered = [c for c in candidates if self._timed_in_trial(c[0])]
        ordered += [c for c in candidates if c not in ordered]
        failures: list[str] = []
        primary_failed = False  # the command's own route (its torch.func transform, under auto)
        working: list[tuple[tuple[Route, bool], dict[str, Any]]] = []
        first_error: FunctionError | None = None
        for n, candidate in enumerate(ordered):
            finite = [w for w in working if not self._suspect(w[1])]
            if finite and not self._timed_in_trial(candidate[0]):
                break
            if working and not finite and not self._worth_a_retry(candidate[0]):
                continue
            try:
                result = self._attempt(candidate, failures, last=n == len(ordered) - 1 and not working)
            except FunctionError as exc:
                # one mode failed where another route still may not: jac jacobian's modes, or
                # any route once another has worked (the function itself ran there)
                if not (working or self._may_avoid(candidate, ordered[n + 1 :], exc)):
                    raise exc if first_error is None else first_error  # noqa: B904 (its own cause)
                first_error = first_error or exc
                failures.append(f"{self._label(*candidate)}: {exc}")
                result = FAILED
            if result is not FAILED:
                working.append((candidate, result))
            elif candidate[0] == candidates[0][0]:
                primary_failed = True
        if not working:
            raise first_error or AssertionError("no working route")
        suspect = [w for w in working if self._suspect(w[1])]
        if suspect and len(suspect) < len(working):
            working = [w for w in working if not self._suspect(w[1])]
        else:
            suspect = []
        # Steady-state kernels pass cotangents as grad_outputs, whose shape check first imports
        # sympy: load it now, outside the timed runs (jaccli.autodiff.kernels).
        import torch.fx.experimental.symbolic_shapes  # noqa: F401

        kernels = [self._prepare(c, r) or (lambda c=c: self._run(*c)) for c, r in working]
        best = [float("inf")] * len(working)
        if len(working) > 1:
            for round_ in range(TRIAL_ROUNDS):
                order = range(len(working)) if round_ % 2 == 0 else reversed(range(len(working)))
                for i in order:
                    best[i] = min(best[i], guarded(lambda i=i: self._time(kernels[i]), self.command))
                if round_ == 0 and sum(best) > TRIAL_BUDGET_S:
                    break
            self.timed = {self._label(*c): t for (c, _), t in zip(working, best)}
        pick = min(range(len(working)), key=best.__getitem__)
        self.chosen, self.kernel = working[pick][0], kernels[pick]
        if primary_failed or first_error is not None:  # else: candidates explored, not fallbacks
            self._note_fallback(failures)
        self._note_suspect(suspect)
        return working[pick][1]

    def _timed_in_trial(self, route: Route) -> bool:
        if self.fallback_commands and all(route not in ROUTES[c] for c in self.commands or (self.command,)):
            return False  # another mode's route, only for when the planned mode fails
        return not route.last_resort and (not route.loop or self.loop_ok)

    def _time(self, kernel: Callable[[], Any]) -> float:
        """The median of as many runs as fit in TRIAL_SLICE_S (at least one): the steady state
        reports medians, and a route that is sometimes fast but often slow should not win."""
        import statistics
        import time

        times: list[float] = []
        while sum(times) < TRIAL_SLICE_S:
            self.sync()
            start = time.perf_counter()
            kernel()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def _prepare(self, candidate: tuple[Route, bool], result: dict[str, Any]) -> Any:
        if self.batch_dim is not None:
            return None
        from jaccli.autodiff.kernels import prepare

        return prepare(candidate[0], self.func, self.primals, self.options, result)

    def _note_fallback(self, failures: list[str]) -> None:
        if failures:
            route, loop = self.chosen
            how = route.label + (", looping over samples" if loop else "")
            self.fallbacks.append(f"fell back to {how} ({'; '.join(failures)})")

    @property
    def label(self) -> str:
        return "?" if self.chosen is None else self._label(*self.chosen)

    def _label(self, route: Route, loop: bool) -> str:
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


# A trial times each working route in this many rounds (alternating), or one when one round of
# them all already took longer than the budget.
TRIAL_ROUNDS = 3
TRIAL_BUDGET_S = 0.5
TRIAL_SLICE_S = 0.01  # each timing takes the median of as many runs as fit in this


FAILED = object()  # what attempt() returns when another route may avoid the failure


def attempt(
    what: str, run: Callable[[], Any], label: str, forward: bool, failures: list[str], last: bool
) -> Any:
    """``run()``'s result, or FAILED (and a line in ``failures``) when its failure is one another
    route may avoid; the function's own errors propagate as FunctionError, and so does any
    failure of the ``last`` route. ``forward``: the route runs forward mode, whose dtype failures
    (a tangent promoted by pytorch#90065, which reverse mode does not do) may fall back too."""
    try:
        return run()
    except FunctionError:
        raise
    except (Exception, SystemExit) as exc:
        why = failure_reason(exc) if not isinstance(exc, SystemExit) else None
        if why is None and forward and "dtype" in str(exc).lower():
            why = "forward-dtype"
        if why is None or last:
            if failures:
                raise FunctionError(
                    f"{what} failed by every route ({'; '.join(failures)}); last, "
                    f"{label} raised {describe(exc)}"
                ) from exc
            guarded(lambda exc=exc: _reraise(exc), what)
        failures.append(f"{label}: {_WHY[why]}")
        return FAILED


def first_working(
    what: str,
    candidates: Sequence[Any],
    run: Callable[[Any], Any],
    label: Callable[[Any], str],
    forward: Callable[[Any], bool],
) -> tuple[Any, Any, list[str]]:
    """``(candidate, result, failures)`` for the first candidate that runs without a failure
    another route avoids (see :func:`attempt`)."""
    failures: list[str] = []
    for n, candidate in enumerate(candidates):
        result = attempt(
            what,
            lambda candidate=candidate: run(candidate),
            label(candidate),
            forward(candidate),
            failures,
            n == len(candidates) - 1,
        )
        if result is not FAILED:
            return candidate, result, failures
    raise AssertionError("no candidate routes")  # every route list has one


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


def evaluate(
    func: Callable[..., Any],
    primals: Sequence[Any],
    batch_dim: int | None,
    engine: str,
    randomness: str = "same",
) -> Any:
    """``func(*primals)``, per sample along ``batch_dim`` when given (vmap, else a loop); random
    draws under vmap follow ``randomness`` (--randomness), as the derivatives' do."""
    if batch_dim is None:
        return func(*primals)

    def one(*args: Any) -> dict[str, Any]:
        return {"value": func(*args)}

    if engine != "autograd":
        try:
            return per_sample(one, primals, {"randomness": randomness}, batch_dim, loop=False)["value"]
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
