"""A smoothing step on a ring of values: a banded Jacobian, good for looking at.

jac jacobian examples/stencil.py:smooth -p randn:12           # a heatmap in the terminal
jac jacobian examples/stencil.py:smooth -p randn:200          # a summary
jac jacobian examples/stencil.py:smooth -p randn:12 --plot J.png
"""

import torch


def smooth(x: torch.Tensor) -> torch.Tensor:
    """tanh of the discrete Laplacian on a ring: each output depends on its value and two
    neighbours (negative on the diagonal, positive beside it), and on nothing else (zeros)."""
    return torch.tanh(x.roll(1) - 2 * x + x.roll(-1))
