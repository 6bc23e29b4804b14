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


class Loss(nn.Module):
    """The MLP's squared error against a fixed target: a one-element output, for Hessians.

    jac spectrum "examples/mlp.py:loss()" -p examples/mlp_x.npy --wrt params --hessian --by real
    """

    def __init__(self) -> None:
        super().__init__()
        self.net = model()
        self.register_buffer("target", torch.tensor([0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.net(x) - self.target) ** 2).mean()


def loss() -> nn.Module:
    """The MLP of model() inside its loss; its parameters are net.0.weight, ..., net.2.bias."""
    return Loss()
