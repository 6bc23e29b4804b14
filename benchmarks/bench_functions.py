"""The functions the benchmarks differentiate, with their inputs (fixed seeds, float32)."""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1]).eval()


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()


def zero_d(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * torch.exp(x)


def elementwise(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x) * x + torch.exp(-(x**2))


def features(x: torch.Tensor) -> torch.Tensor:
    """A few inputs fanned out to many outputs: forward mode's home ground."""
    k = torch.arange(1, 101, dtype=x.dtype)
    return torch.cat([torch.cos(k * x[0]), torch.sin(k * x[1]), torch.tanh(k * x[2])])


def curve(x: torch.Tensor) -> torch.Tensor:
    """One input traced out to many outputs through cheap elementwise work."""
    k = torch.arange(1, 101, dtype=x.dtype)
    return torch.cat([torch.cos(k * x), torch.sin(k * x), torch.tanh(k * x)])


def _randn(*shape: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(*shape)


def mode_cases() -> list[dict]:
    """(function, input) pairs spanning the forward/reverse trade-off."""
    return [
        {"name": "mlp 512->64->10", "func": mlp([512, 64, 10]), "x": _randn(512), "n_in": 512, "n_out": 10},
        {"name": "mlp 10->64->512", "func": mlp([10, 64, 512]), "x": _randn(10), "n_in": 10, "n_out": 512},
        {"name": "mlp 48->64->32", "func": mlp([48, 64, 32]), "x": _randn(48), "n_in": 48, "n_out": 32},
        {"name": "mlp 32->64->48", "func": mlp([32, 64, 48]), "x": _randn(32), "n_in": 32, "n_out": 48},
        {"name": "mlp 64->64->64", "func": mlp([64, 64, 64]), "x": _randn(64), "n_in": 64, "n_out": 64},
        {"name": "elementwise 1000", "func": elementwise, "x": _randn(1000), "n_in": 1000, "n_out": 1000},
        {"name": "rosenbrock 1000", "func": rosenbrock, "x": _randn(1000), "n_in": 1000, "n_out": 1},
        {"name": "features 3->300", "func": features, "x": _randn(3), "n_in": 3, "n_out": 300},
        {"name": "curve 1->300", "func": curve, "x": _randn(1), "n_in": 1, "n_out": 300},
        {"name": "mlp 4->64->5000", "func": mlp([4, 64, 5000]), "x": _randn(4), "n_in": 4, "n_out": 5000},
        {
            "name": "mlp 64->10, batch 32",
            "func": mlp([64, 64, 10]),
            "x": _randn(32, 64),
            "n_in": 64,
            "n_out": 10,
            "batch_dim": 0,
        },
    ]


def mlp_64_512() -> nn.Module:
    """The 64 -> 512 -> 64 tanh MLP of the directions benchmark (float32)."""
    return mlp([64, 512, 64])


def banded(x: torch.Tensor) -> torch.Tensor:
    """A nonlinear stencil on a line (n = x.numel(), any size, never formed by jac spectrum): a
    diagonal with a few large, well separated entries near i = 0 (d_i = 1 + 4 * 0.7^i), a cubic
    term, diffusion and a little advection (so J is not symmetric). The top singular values and
    eigenvalues stand apart from the bulk near 1, which ARPACK finds in few products."""
    n = x.numel()
    d = 1 + 4 * 0.7 ** torch.arange(n, dtype=x.dtype)
    left = torch.cat([x.new_zeros(1), x[:-1]])
    right = torch.cat([x[1:], x.new_zeros(1)])
    return d * x + 0.1 * x**3 + 0.1 * (left - 2 * x + right) + 0.05 * (right - left)
