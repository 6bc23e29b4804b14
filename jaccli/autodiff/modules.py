"""``nn.Module`` FUNCs: loading a state (``--state``) and differentiating with respect to the
parameters (``--wrt params``) through ``torch.func.functional_call``.

With ``--wrt params`` the differentiated arguments are the module's parameters, in
``named_parameters()`` order, and the ``-p`` inputs are constants; result keys name the
parameter where they would name a primal's position (``vjp.0.weight``, ``jacobian.0.bias``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from jaccli.errors import InputError, key_mismatch


def as_module(func: Any, why: str) -> Any:
    import torch

    if isinstance(func, torch.nn.Module):
        return func
    raise InputError(
        f"{why} needs FUNC to be a torch.nn.Module instance (or a factory returning one); "
        f"it is {type(func).__name__}"
    )


def load_state(module: Any, path: str) -> None:
    """Load parameters and buffers from a ``.pt`` (weights only) or ``.npz``; names and shapes must match."""
    import numpy as np
    import torch

    origin = f"--state {path}"
    if not os.path.isfile(path):
        raise InputError(f"{origin}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for anything but tensors and containers
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"{origin} cannot be loaded with weights_only=True ({first}); save a state_dict "
                "of tensors (torch.save(model.state_dict(), path))"
            ) from exc
    elif suffix == ".npz":
        from jaccli.io.inputs import read_source

        state = {a.name: torch.from_numpy(np.array(a.data)) for a in read_source(path, "--state")}
    else:
        raise InputError(f"{origin}: use a .pt/.pth state_dict or an .npz of arrays")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{origin} is not a flat state_dict of tensors (name -> tensor)")
    expected = module.state_dict()
    mismatch = key_mismatch(list(expected), list(state))
    if mismatch:
        raise InputError(
            f"{origin} does not match the module's parameters: {mismatch} "
            f"(the module has {', '.join(list(expected)[:8])})"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise InputError(
                f"{origin}: parameter {name} has shape {tuple(value.shape)} in the file but "
                f"{tuple(expected[name].shape)} in the module"
            )
    with torch.no_grad():
        module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def over_parameters(
    module: Any, inputs: Sequence[Any], kwargs: dict[str, Any]
) -> tuple[Callable[..., Any], list[Any], list[str]]:
    """``(g, params, names)`` with ``g(*params) == module(*inputs, **kwargs)`` for those parameters."""
    from torch.func import functional_call

    named = list(module.named_parameters())
    if not named:
        raise InputError("--wrt params: the module has no parameters")
    names = [n for n, _ in named]
    params = [p.detach() for _, p in named]
    fixed = tuple(inputs)

    def g(*values: Any) -> Any:
        return functional_call(module, dict(zip(names, values)), fixed, kwargs)

    return g, params, names


def rename_key(key: str, command: str, names: Sequence[str], argnums: Any) -> str:
    """Put parameter names where a key counts primals (positions within ``argnums``)."""
    parts = key.split(".")
    args = argnums if isinstance(argnums, tuple) else None
    if parts[0] in ("vjp", "grad", "hvp") and len(parts) > 1 and command in ("vjp", "hvp"):
        parts[1] = names[int(parts[1])]
    elif parts[0] == "jacobian" and args is not None:
        parts[-1] = names[args[int(parts[-1])]]
    elif parts[0] == "hessian" and args is not None:
        parts[1], parts[2] = names[args[int(parts[1])]], names[args[int(parts[2])]]
    return ".".join(parts)
