"""Choosing the device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``, with a clear error when it is missing."""

from __future__ import annotations

import re

from jaccli.errors import InputError

DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return devices


def resolve_device(name: str):
    """The ``torch.device`` for ``name``; an unavailable one is an input error listing what is."""
    import torch

    if not DEVICE_PATTERN.match(name):
        raise InputError(f"--device {name!r}: use cpu, cuda, cuda:N or auto")
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return (
            torch.device("cuda", torch.cuda.current_device())
            if torch.cuda.is_available()
            else torch.device("cpu")
        )
    available = available_devices()
    if not torch.cuda.is_available():
        raise InputError(
            f"--device {name}: CUDA is not available here ({_why_no_cuda()}); available: "
            f"{', '.join(available)}; use --device cpu or auto"
        )
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: no such GPU; available: {', '.join(available)}")
    return torch.device("cuda", index)


def synchronizer(device):
    """A function that waits for the device's queued work (a no-op on the CPU), for timing."""
    if device.type != "cuda":
        return lambda: None
    import torch

    return lambda: torch.cuda.synchronize(device)


def _why_no_cuda() -> str:
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    return "no CUDA device or driver was found"


def place_module(func, device, dtype: str | None) -> None:
    """Move an ``nn.Module`` FUNC (or the module behind a bound method) to the device.

    With ``--dtype``, its floating parameters and buffers are cast too, so a float64 check of
    a float32 layer runs in float64 throughout. Plain functions are left as they are.
    """
    import torch

    module = func if isinstance(func, torch.nn.Module) else getattr(func, "__self__", None)
    if isinstance(module, torch.nn.Module):
        module.to(device=device, dtype=getattr(torch, dtype) if dtype else None)
