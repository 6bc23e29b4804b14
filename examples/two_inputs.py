"""A function of two inputs with a dict output, and a keyword argument.

jac vjp examples/two_inputs.py:f -p examples/xy.npz -u examples/u.yaml
jac jacrev examples/two_inputs.py:f -p examples/xy.npz --argnums 0,1 --kwarg scale=2.0
"""

import torch


def f(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """{'product': scale * x * y, 'energy': sum(x^2) + sum(y^3)} for x, y of the same shape."""
    return {"product": scale * x * y, "energy": (x**2).sum() + (y**3).sum()}
