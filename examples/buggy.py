"""A custom layer with a planted bug in its backward, for `jac check` to find.

jac check examples/buggy.py:layer -p randn:5      # exit 1: reverse mode disagrees
jac check examples/buggy.py:fixed -p randn:5      # exit 0
"""

import torch


class SoftClip(torch.autograd.Function):
    """y = tanh(x) * 2, with a hand-written derivative."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(x) ** 2)  # the bug: the factor 2 is missing

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return tangent * 2 * (1 - torch.tanh(x) ** 2)


def layer(x: torch.Tensor) -> torch.Tensor:
    return SoftClip.apply(x)


def fixed(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 2
