"""How jac calls the user's function: on the inputs the user gave, with a reproducible random stream.

Two things a function can do that would make jac's numbers depend on how often, or in which order,
jac calls it:

- change its inputs in place (``x.mul_(2)``): the second call would see other inputs than the first;
- draw random numbers (dropout, ``torch.randn``): each call would see another draw, so a derivative
  and the function it is compared with would belong to different functions.

:func:`profile` finds both on the first, plain call; :func:`disciplined` then wraps the function so
that every later call (derivatives, trials, steady-state runs, checks) gets its own copy of the
inputs and the same seeded random stream. A function that does neither is returned unwrapped, so it
costs nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the body on a forked torch random stream seeded with ``seed``; the caller's is restored after.

    ``seed=None`` leaves the random stream alone. CUDA's stream is forked only when CUDA is already
    initialised (forking it would initialise it).
    """
    if seed is None:
        yield
        return
    import torch

    cuda = torch.cuda.is_initialized()
    devices = [torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        # what torch.manual_seed does for the streams in use, without its lazy seeding of every
        # other backend (which records a stack trace each time: milliseconds per call)
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def copies(args: Sequence[Any]) -> tuple:
    """A copy of every tensor in ``args`` (nested in lists, tuples and dicts); other values as they are."""
    import torch
    from torch.utils._pytree import tree_map

    return tuple(tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, a) for a in args)


@dataclass(frozen=True)
class Profile:
    """What the first call showed about the function."""

    mutates: bool  # it changed one of its input tensors in place
    random: bool  # it drew from torch's random stream
    # it changed a tensor it reads but is not given as an argument (``state``: a module's buffers,
    # the inputs of a function over a module's parameters)
    changes_state: bool = False

    @property
    def plain(self) -> bool:
        return not (self.mutates or self.random or self.changes_state)


def _versions(args: Sequence[Any]) -> list[int]:
    import torch
    from torch.utils._pytree import tree_leaves

    return [t._version for t in tree_leaves(list(args)) if isinstance(t, torch.Tensor)]


def _rng_states() -> list:
    import torch

    states = [torch.get_rng_state()]
    if torch.cuda.is_initialized():
        states.append(torch.cuda.get_rng_state())
    return states


def _snapshot(state: Sequence[Any]) -> list:
    return [t.detach().clone() for t in state]


def _restore(state: Sequence[Any], saved: Sequence[Any]) -> None:
    import contextlib

    import torch

    # under a torch.func transform the state is a captured tensor, which functorch would refuse
    # to see changed: put it back below the transforms
    plain = getattr(torch._C, "_DisableFuncTorch", contextlib.nullcontext)
    with torch.no_grad(), plain():
        for t, s in zip(state, saved):
            t.copy_(s)


def profile(
    fn: Callable, args: Sequence[Any], seed: int | None = 0, state: Sequence[Any] = ()
) -> tuple[Any, Profile]:
    """Call ``fn(*args)`` once, as every later call will see it, and return its output and profile.

    The inputs are left as they were: a function that changes them in place is called on copies.
    ``state``: tensors the function reads without taking them as arguments (a module's buffers);
    any it changes are put back after the call.
    """
    import torch

    fresh = copies(args)  # one pass over the inputs, paid by this first call only
    before_versions = _versions(fresh)
    state = [t for t in state if isinstance(t, torch.Tensor)]
    state_versions, saved = _versions(state), _snapshot(state)
    with seeded(seed):
        before_rng = _rng_states()
        try:
            out = fn(*fresh)
        finally:
            changes_state = _versions(state) != state_versions
            if changes_state:
                _restore(state, saved)
        after_rng = _rng_states()
    random = len(before_rng) != len(after_rng) or any(
        not torch.equal(a, b) for a, b in zip(before_rng, after_rng)
    )
    mutates = _versions(fresh) != before_versions
    return out, Profile(mutates=mutates, random=random, changes_state=changes_state)


def disciplined(fn: Callable, how: Profile, seed: int | None = 0, state: Sequence[Any] = ()) -> Callable:
    """``fn`` wrapped so that each call sees fresh inputs and the seeded random stream, as needed.

    The ``state`` tensors (as given to :func:`profile`) are put back as they were before each
    call (not after: a backward pass may still need what the call left there); the wrapper's
    ``restore_state()`` puts them back once the work is done."""
    if how.plain:
        return fn
    import torch

    state = [t for t in state if isinstance(t, torch.Tensor)] if how.changes_state else []
    saved = _snapshot(state)

    def call(*args: Any, **kwargs: Any) -> Any:
        if how.mutates:
            args = copies(args)
        if state:
            _restore(state, saved)
        with seeded(seed if how.random else None):
            return fn(*args, **kwargs)

    call.__name__ = getattr(fn, "__name__", "function")
    call.restore_state = lambda: _restore(state, saved)  # type: ignore[attr-defined]
    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call
