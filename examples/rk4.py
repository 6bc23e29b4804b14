"""One step of the classic Runge-Kutta method (RK4) for a damped pendulum, and its Jacobian.

    jac jacobian examples/rk4.py:step -p examples/pendulum_y0.yaml --kwarg dt=0.05
    jac jacobian examples/rk4.py:step -p randn:16,2 --batch-dim 0     # per initial state

The Jacobian of the step map, d y(t+dt) / d y(t), is what sensitivity analysis, shooting
methods and implicit solvers need. For this pendulum the flow shrinks areas in the phase plane
by exp(-damping * dt) per step, and so, up to RK4's error, does the Jacobian's determinant.
"""

import torch


def pendulum(y: torch.Tensor, damping: float = 0.25, gravity: float = 9.81) -> torch.Tensor:
    """dy/dt for y = (angle, angular velocity), on the last dimension."""
    angle, velocity = y[..., 0], y[..., 1]
    return torch.stack((velocity, -damping * velocity - gravity * torch.sin(angle)), dim=-1)


def step(y: torch.Tensor, dt: float = 0.1, damping: float = 0.25) -> torch.Tensor:
    """y after one RK4 step of length dt."""
    k1 = pendulum(y, damping)
    k2 = pendulum(y + dt / 2 * k1, damping)
    k3 = pendulum(y + dt / 2 * k2, damping)
    k4 = pendulum(y + dt * k3, damping)
    return y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
