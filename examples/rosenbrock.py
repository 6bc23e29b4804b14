"""The Rosenbrock function, the classic test of optimisers: its gradient and its Hessian.

    jac jacrev examples/rosenbrock.py:rosenbrock -p examples/rosenbrock_x.yaml    # the gradient
    jac hessian examples/rosenbrock.py:rosenbrock -p examples/rosenbrock_x.yaml

Its minimum is at x = (1, 1, ..., 1), where the gradient is zero and the Hessian positive
definite; the start point (-1.2, 1, ...) lies on the far side of a curved, narrow valley.
"""

import torch


def rosenbrock(x: torch.Tensor, a: float = 1.0, b: float = 100.0) -> torch.Tensor:
    """sum over i of (a - x[i])^2 + b * (x[i+1] - x[i]^2)^2, a scalar."""
    return ((a - x[:-1]) ** 2 + b * (x[1:] - x[:-1] ** 2) ** 2).sum()
