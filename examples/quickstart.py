"""The quickstart: a map from 3x2 matrices to 3-vectors, and a scalar loss.

jac jvp examples/quickstart.py:f -p examples/x.npy -t examples/v.npy
jac jacrev examples/quickstart.py:f -p examples/x.npy
jac vjp examples/quickstart.py:loss -p examples/x.yaml
"""

import torch


def f(x: torch.Tensor) -> torch.Tensor:
    """y[i] = 2 * (x[i, 0] + x[i, 1]): the 2-D case people ask about on the forums.

    At x = ones(3, 2) and v = [[1, 2], [3, 4], [5, 6]], J.v = [6, 14, 22]: each output row
    sums its own row of v, times 2, because the Jacobian (3, 3, 2) is zero off the diagonal
    blocks. As a matrix it is 3 x 6.
    """
    return 2 * x.sum(dim=1)


def loss(x: torch.Tensor) -> torch.Tensor:
    """A scalar: 0.5 * sum(sin(x)^2); its gradient is sin(x) * cos(x)."""
    return 0.5 * torch.sin(x).pow(2).sum()
