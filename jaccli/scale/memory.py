"""How a Jacobian is computed so that it fits in the memory allowed: at once, in chunks, or
streamed to the ``.npy`` file it is written to.

Estimates, made before any derivative runs:

- the result: every block's entries times the item size (times the batch under --batch-dim);
- the working memory of computing it at once: torch.func's jacrev and jacfwd vmap over every
  one-hot vector together, so each pass (a row in reverse mode, a column in forward mode) keeps
  its one-hot vector, its result and the function's intermediates alive at once; a pass is
  counted as ``2 x (input elements + output elements)`` items, which covers elementwise layers
  and matrix products whose intermediates are the size of their inputs or outputs.

When the whole does not fit in ``--max-memory`` (default: 80% of the memory free now) but the
result does, the passes go in chunks small enough for the peak to fit. When the result itself
does not fit, it is streamed, a chunk at a time, into ``-o PATH.npy`` (one result: one block,
or ``--select``); any other output is an input error before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jaccli.errors import InputError, human_size

AT_ONCE, CHUNKED, STREAMED = "at once", "chunked", "streamed"


@dataclass(frozen=True)
class Plan:
    how: str  # AT_ONCE, CHUNKED or STREAMED
    mode: str | None = None  # fwd or rev: the preferred mode of the chunks
    chunk: int | None = None  # passes (rows or columns) per chunk
    why: str = ""  # for the timing table: the sizes that decided

    def note(self, streamed_to: str | None = None) -> str:
        unit = "rows" if self.mode == "rev" else "columns"
        if self.how == CHUNKED:
            return f"memory: computed in chunks of {self.chunk} {unit} ({self.why})"
        if self.how == STREAMED:
            return f"memory: streamed to {streamed_to} in chunks of {self.chunk} {unit} ({self.why})"
        return ""


@dataclass(frozen=True)
class Block:
    key: str
    shape: tuple[int, ...]  # with the batch leading (1 without --batch-dim)
    info: Any = None  # the JacobianInfo of a Jacobian block; None for a Hessian (never chunked)

    @property
    def n_out(self) -> int:
        return self.info.matrix_shape[0] if self.info else 0

    @property
    def n_in(self) -> int:
        return self.info.matrix_shape[1] if self.info else 0


def blocks(layout: Any, sample_primals: Any, argnums: Any, samples: int) -> list[Block]:
    """Every Jacobian or Hessian block ``layout`` names, with its shape."""
    args = argnums if isinstance(argnums, tuple) else (argnums,)
    found = []
    for key, info in layout:
        if info is not None:
            found.append(Block(key, (samples, *info.output_shape, *info.input_shape), info))
        elif key.startswith("hessian"):
            i, j = (int(p) for p in key.split(".")[1:]) if "." in key else (0, 0)
            shape = (samples, *sample_primals[args[i]].shape, *sample_primals[args[j]].shape)
            found.append(Block(key, shape))
    return found


def allowed_bytes(limit: int | None) -> int:
    from jaccli.io.inputs import available_memory

    return limit if limit is not None else int(0.8 * available_memory())


def plan(
    command: str,
    found: list[Block],
    itemsize: int,
    mode: str,
    limit: int | None,
    chunk_size: int | None,
    streamable: Block | None,
    stream_as: str = "auto",
    distributed: bool = False,
) -> Plan:
    """At once, chunked or streamed; an input error when it cannot fit at all.

    ``mode`` is the mode computing at once would use (fwd or rev); ``streamable`` is the one
    block written to ``-o PATH.npy`` when the request allows streaming, else None, and
    ``stream_as`` the mode asked for it (fwd, rev, or auto: fewer passes).
    ``distributed`` (torchrun) always streams: each process writes its share of the file.
    """
    allowed = allowed_bytes(limit)
    where = "--max-memory" if limit is not None else "80% of the memory free now"
    result = sum(math.prod(b.shape) for b in found) * itemsize
    jacobians = [b for b in found if b.info is not None]
    if distributed or (streamable is not None and result > allowed):
        if streamable is None:
            raise InputError(
                "under torchrun, jac shards one Jacobian block written with -o PATH.npy; add -o J.npy "
                "(and --select KEY when there are several results), or run without torchrun"
            )
        return _streamed(
            streamable, itemsize, stream_mode(streamable, stream_as), allowed, where, chunk_size, result
        )
    samples = found[0].shape[0] if found else 1
    n_in = sum({b.info.input_index: b.n_in for b in jacobians}.values())
    n_out = sum({b.info.output_key: b.n_out for b in jacobians}.values())
    per_pass = 2 * itemsize * (n_in + n_out) * samples
    passes = n_out if mode == "rev" else n_in
    if mode == "rev" and chunk_size:
        passes = min(passes, chunk_size)
    if result + passes * per_pass <= allowed:
        return Plan(AT_ONCE)
    if jacobians and samples == 1 and len(jacobians) == len(found) and result + per_pass <= allowed:
        chunk = chunk_size or max(1, (allowed - result) // per_pass)
        why = (
            f"the result takes {human_size(result)}, computing it at once about "
            f"{human_size(result + passes * per_pass)}, more than {where} ({human_size(allowed)})"
        )
        return Plan(CHUNKED, mode, chunk, why)
    if result <= allowed:
        return Plan(AT_ONCE)  # no way to chunk it (Hessians, --batch-dim): try as it is
    biggest = max(found, key=lambda b: math.prod(b.shape))
    shown = biggest.shape if samples > 1 else biggest.shape[1:]
    stream = "stream one block to disk with -o J.npy (--select KEY), " if jacobians else ""
    raise InputError(
        f"the {command} results would take {human_size(result)} ({biggest.key} alone has shape "
        f"{tuple(shown)}), more than {where} ({human_size(allowed)}): {stream}compute fewer blocks with "
        "--argnums, ask for J.v (jac jvp) or u^T.J (jac vjp) instead, or raise --max-memory"
    )


def _streamed(
    block: Block, itemsize: int, mode: str, allowed: int, where: str, chunk_size: int | None, result: int
) -> Plan:
    per_pass_work = 2 * itemsize * (block.n_in + block.n_out)
    other = block.n_in if mode == "rev" else block.n_out
    per_pass = per_pass_work + 2 * other * itemsize  # the chunk itself, and its copy on the way out
    passes = block.n_out if mode == "rev" else block.n_in
    chunk = chunk_size or max(1, min(passes, allowed // max(per_pass, 1)))
    why = f"the result takes {human_size(result)}; {where} is {human_size(allowed)}"
    return Plan(STREAMED, mode, chunk, why)


def stream_mode(block: Block, requested: str) -> str:
    """For streaming, the mode with fewer passes unless one was asked for (fwd or rev)."""
    if requested in ("fwd", "rev"):
        return requested
    return "fwd" if block.n_in < block.n_out else "rev"
