"""Sharding one Jacobian over the processes ``torchrun`` starts.

``torchrun --nproc-per-node N -m jaccli jacrev FUNC -p X -o J.npy`` starts N copies of jac with
WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Each loads the function and the
inputs, and computes its share of the passes: a contiguous range of rows (reverse mode) or
columns (forward mode). Rank 0 creates the temporary ``.npy`` at full size and tells the others
its name; every rank writes its slice; a sum over ranks of a failure flag then tells every rank
whether all succeeded, and rank 0 renames the file into place only then (or removes it).

The process group uses gloo on the CPU and nccl on CUDA (each rank on ``cuda:LOCAL_RANK``), with
a timeout (``JAC_DIST_TIMEOUT`` seconds, default 1800) so that a rank that dies cannot leave the
others waiting forever; torchrun also stops every rank when one exits with an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from jaccli.errors import FunctionError

DEFAULT_TIMEOUT_S = 1800


def launched() -> bool:
    """True under torchrun (or any launcher setting the torch.distributed variables) with 2+ ranks."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    return world > 1 and all(name in os.environ for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"))


def rank() -> int:
    """This process's rank (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def local_device(name: str) -> str:
    """``cuda`` and ``auto`` mean this rank's own GPU (``cuda:LOCAL_RANK``) under torchrun."""
    if not launched() or name not in ("cuda", "auto"):
        return name
    import torch

    if name == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


@dataclass
class Session:
    """An initialised process group."""

    rank: int
    world: int
    device: Any  # where collective tensors live: the CPU for gloo, this rank's GPU for nccl

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def total(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks."""
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def share_of(self, total: int) -> tuple[int, int]:
        """This rank's contiguous range of ``total`` passes (sizes differ by at most one)."""
        return self.rank * total // self.world, (self.rank + 1) * total // self.world

    def close(self) -> None:
        import torch.distributed as dist

        dist.destroy_process_group()


def start(device: Any) -> Session:
    """Join the process group: nccl for a CUDA device, gloo otherwise."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    timeout = timedelta(seconds=float(os.environ.get("JAC_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return Session(
        dist.get_rank(), dist.get_world_size(), device if device.type == "cuda" else torch.device("cpu")
    )


class Single:
    """The same interface for one process: the whole range, nothing to share."""

    rank, world = 0, 1

    def share(self, value: Any) -> Any:
        return value

    def total(self, values: list[float]) -> list[float]:
        return list(values)

    def share_of(self, total: int) -> tuple[int, int]:
        return 0, total

    def close(self) -> None:
        pass


def fill_shared_file(
    session: Any, writer: Any, error: BaseException | None, shared: Any, attach: Any, fill: Any
) -> tuple[Any, BaseException | None]:
    """Every rank writes its share into the temporary file rank 0 created: ``shared`` is what
    rank 0 tells the others (None elsewhere), ``attach(shared)`` opens that file on the other
    ranks, ``fill(writer)`` writes this rank's share. Every rank reaches the same exchange
    whatever failed before or fails here (the error is returned, for the failure flags that
    follow); Ctrl-C or SIGTERM discards rank 0's file and waits for no one."""
    shared = session.share(shared)
    try:
        if error is None and shared is None:
            raise FunctionError("another process failed before the file was created; nothing was written")
        if error is None:
            writer = writer or attach(shared)
            fill(writer)
    except Exception as exc:  # noqa: BLE001 - every rank must still reach the exchanges
        error = error or exc
    except BaseException:
        if session.rank == 0 and writer is not None:
            writer.discard()
        raise
    return writer, error
