"""A small tanh MLP, 4 -> 8 -> 2, built by a factory with fixed weights.

    jac jacrev examples/mlp.py:model() -p randn:4
    jac vjp examples/mlp.py:model() -p examples/mlp_x.npy -u ones
"""

import torch
from torch import nn


def model() -> nn.Module:
    """The MLP with weights from a fixed seed, so every run differentiates the same function."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
