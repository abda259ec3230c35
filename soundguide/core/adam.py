"""Adam for the latent code, without ``torch.optim``.

``torch.optim.Adam`` imports ``torch._dynamo`` the first time it is built
(its ``add_param_group`` is wrapped to disable compilation): about 900
modules and 150 MB of resident memory, a tenth of an edit's budget, to
update one (N, L, D) tensor. :class:`LatentAdam` does the same arithmetic as
``torch.optim.Adam``'s single-tensor path (its default on the CPU) with
default settings, operation for operation, so results are bit-identical there.
"""

from __future__ import annotations

import math

import torch


class LatentAdam:
    """Adam (no weight decay, no AMSGrad) for one tensor that requires grad.

    ``lr`` may be changed between steps (schedules set it before each update).
    """

    def __init__(
        self,
        param: torch.Tensor,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not param.requires_grad:
            raise ValueError("LatentAdam needs a tensor that requires grad")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.param = param
        self.lr = float(lr)
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)

    def zero_grad(self) -> None:
        self.param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update from ``param.grad``; a missing gradient leaves everything unchanged."""
        grad = self.param.grad
        if grad is None:
            return
        beta1, beta2 = self.betas
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2 = 1 - beta2**self.steps
        step_size = self.lr / bias_correction1
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
        self.param.addcdiv_(self.exp_avg, denom, value=-step_size)
