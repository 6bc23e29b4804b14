"""Turning read sources into the tensors torch.func is called with.

- primals: one per array read (an ``.npz`` or YAML mapping gives several), generators need a
  shape (``randn:3,2``);
- tangents: one per primal, same shape; a lone shapeless generator (``-t randn``) stands for all;
- cotangents: one per leaf of the function's output, same shapes; a dict output takes a
  mapping keyed like it.

dtypes: ``--dtype`` casts every floating input; otherwise ``.npy``/``.npz`` keep theirs and
YAML, literals and generators use float32. Integer and boolean arrays become the floating dtype
in use (``--dtype``, else the promotion of the floating primals, else float32). Tangents and
cotangents take the dtype of the primal or output they pair with, as torch.func requires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaccli import trees
from jaccli.errors import InputError, key_mismatch
from jaccli.io.inputs import Array, Generator, Source


def primal_tensors(sources: Sequence[Source], dtype: str | None, rng: np.random.Generator) -> list:
    """The primals as CPU tensors, in order."""
    import torch

    arrays: list[Array] = []
    for source in sources:
        if isinstance(source, Generator):
            if source.shape is None:
                raise InputError(
                    f"{source.origin}: a generated primal needs a shape, e.g. {source.kind}:3,2 "
                    f"(or {source.kind}: for a scalar)"
                )
            arrays.append(Array(source.make(source.shape, rng), source.origin))
        else:
            arrays.extend(source)
    if not arrays:
        raise InputError("no primals: give at least one -p/--primals")
    wanted = [_wanted_dtype(a, dtype) for a in arrays]
    floating = [getattr(torch, w) for w in wanted if w in _FLOATS]
    in_use = torch.float32
    if dtype is not None:
        in_use = getattr(torch, dtype)
    elif floating:
        in_use = floating[0]
        for other in floating[1:]:
            in_use = torch.promote_types(in_use, other)
    return [_tensor(a.data, getattr(torch, w) if w in _FLOATS else in_use) for a, w in zip(arrays, wanted)]


_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _wanted_dtype(array: Array, flag: str | None) -> str:
    """The floating dtype an array becomes, or 'int' when it awaits the dtype in use."""
    if array.dtype in _FLOATS or (array.dtype is None and array.data.dtype.kind == "f"):
        return flag or array.dtype or "float32"
    return "int"


def _tensor(data: np.ndarray, dtype) -> Any:
    """A CPU tensor of ``dtype`` from any numpy layout (big-endian, Fortran order, strided)."""
    import torch

    native = data.dtype.newbyteorder("=")
    data = np.require(data, dtype=native, requirements=["C_CONTIGUOUS", "WRITEABLE"])
    return torch.from_numpy(data).to(dtype)


def tangent_tensors(
    sources: Sequence[Source],
    primals: Sequence[Any],
    rng: np.random.Generator,
    names: Sequence[str] | None = None,
    command: str = "jvp",
    batch_dim: int | None = None,
) -> list:
    """Tangents on the primals' device, one per primal with its shape and dtype.

    With ``names`` (a module's parameters under --wrt params) a mapping is matched by name.
    Under --batch-dim, v defaults to 1 when every sample of every primal has one element.
    """
    what = "parameter" if names else "primal"
    labels = list(names) if names else [str(i) for i in range(len(primals))]
    if not sources:
        if all(_sample_size(p, batch_dim) == 1 for p in primals):
            return [_ones_like(p) for p in primals]
        sizes = ", ".join(f"{what} {k} has {p.numel()} elements" for k, p in zip(labels, primals))
        raise InputError(
            f"{command} needs --tangents/-t ({sizes}); give one -t per {what}, e.g. -t v.npy or -t "
            f"randn (tangents may be left out only when every {what} has one element)"
        )
    like = dict(zip(labels, primals))
    if names and _wants_names(sources, like):
        arrays = _by_name(sources, labels, like, "--tangents", "the module's parameters are")
    else:
        shapes = [(what, k, tuple(p.shape)) for k, p in zip(labels, primals)]
        arrays = _expand(sources, shapes, "tangent", "--tangents", rng)
    return [_paired(a, p, f"tangent {k}", f"{what} {k}") for k, a, p in zip(labels, arrays, primals)]


def cotangent_tree(
    sources: Sequence[Source], output: Any, rng: np.random.Generator, batched: bool = False
) -> Any:
    """Cotangents shaped like ``output`` (a tensor, or a tuple/list/dict of them).

    u defaults to 1 when the output (each sample's, when ``batched``) has one element.
    """
    leaves = trees.leaves(output)
    if not sources:
        if len(leaves) == 1 and _sample_size(leaves[0][1], 0 if batched else None) == 1:
            return trees.unflatten(output, [_ones_like(leaves[0][1])])
        shapes = ", ".join(f"{_out_name(k)} has shape {tuple(t.shape)}" for k, t in leaves)
        raise InputError(
            f"vjp needs --cotangents/-u ({shapes}); give one -u per output, e.g. -u u.npy or -u "
            "ones (cotangents may be left out only when the output has one element)"
        )
    keys = [k for k, _ in leaves]
    arrays = None
    if _wants_names(sources, output):
        arrays = _by_name(sources, keys, output, "--cotangents", "the output is a dict with keys")
    if arrays is None:
        shapes = [("output", _out_name(k), tuple(t.shape)) for k, t in leaves]
        arrays = _expand(sources, shapes, "cotangent", "--cotangents", rng)
    values = [
        _paired(a, t, f"cotangent for {_out_name(k)}", _out_name(k)) for a, (k, t) in zip(arrays, leaves)
    ]
    return trees.unflatten(output, values)


def _sample_size(tensor: Any, batch_dim: int | None) -> int:
    """Elements of one sample (of the whole tensor without a batch dimension)."""
    if batch_dim is None or tensor.dim() == 0 or tensor.shape[batch_dim] == 0:
        return tensor.numel()
    return tensor.numel() // tensor.shape[batch_dim]


def _out_name(key: str) -> str:
    return trees.join("output", key)


def _expand(
    sources: Sequence[Source],
    targets: list[tuple[str, str, tuple[int, ...]]],
    role: str,
    option: str,
    rng: np.random.Generator,
) -> list[Array]:
    """One array per target, generators shaped after their target."""
    if len(sources) == 1 and isinstance(sources[0], Generator) and sources[0].shape is None:
        gen = sources[0]
        return [Array(gen.make(shape, rng), gen.origin) for _, _, shape in targets]
    items: list[Array | Generator] = []
    for source in sources:
        items.extend([source] if isinstance(source, Generator) else source)
    if len(items) != len(targets):
        what = targets[0][0] + "s"
        raise InputError(
            f"{len(items)} {role}(s) for {len(targets)} {what}; give one {option} value per "
            f"{targets[0][0]} (an .npz or YAML mapping counts as one per array), or one "
            f"generator such as {option} randn for all"
        )
    out = []
    for item, (_, _, shape) in zip(items, targets):
        if isinstance(item, Generator):
            out.append(Array(item.make(item.shape if item.shape is not None else shape, rng), item.origin))
        else:
            out.append(item)
    return out


def _wants_names(sources: Sequence[Source], output: Any) -> bool:
    """Match cotangents by name when the output is a dict (at the top) and arrays are named."""
    if not isinstance(output, dict):
        return False
    return not (len(sources) == 1 and isinstance(sources[0], Generator))


def _by_name(sources: Sequence[Source], keys: list[str], like: dict, option: str, what: str) -> list[Array]:
    named: dict[str, Array] = {}
    for source in sources:
        if isinstance(source, Generator) or any(a.name is None for a in source):
            origin = source.origin if isinstance(source, Generator) else source[0].origin
            raise InputError(
                f"{origin}: {what} {', '.join(map(str, like))}; give a mapping keyed like "
                "them (an .npz, or YAML 'key: value' lines)"
            )
        for array in source:
            named[array.name] = array
    mismatch = key_mismatch(keys, list(named))
    if mismatch:
        raise InputError(f"{option} keys do not match ({', '.join(keys)}): {mismatch}")
    return [named[k] for k in keys]


def _paired(array: Array, like: Any, role: str, target: str) -> Any:
    shape = tuple(array.data.shape)
    if shape != tuple(like.shape):
        raise InputError(
            f"{role} ({array.origin}) has shape {shape} but {target} has shape "
            f"{tuple(like.shape)}; they must match exactly"
        )
    return _tensor(array.data, like.dtype).to(like.device)


def _ones_like(tensor: Any) -> Any:
    import torch

    return torch.ones_like(tensor)
