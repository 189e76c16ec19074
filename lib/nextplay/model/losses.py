"""What trains the model: one `Loss` object, chosen once from `model.loss` when the model is built.

A loss sees the head, the session vectors of the trained steps and their targets, and `mix`: the
function that turns the head's log p(target) into the repeat mixture's (None when the model has no
repeat pointer). It returns the loss summed over the steps.

- `CrossEntropy`: the negative log-likelihood of the mixture (or of the head alone).
- `BPRMax`: GRU4Rec's ranking loss trains the head (sampled head only, heads.SampledSoftmax.bpr_max);
  with a repeat pointer, the mixture's likelihood, with the head's scores detached, trains the gate
  and the pointer.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from nextplay.config import ModelConfig

Mix = Callable[[torch.Tensor], torch.Tensor]


class Loss(Protocol):
    def __call__(self, head: torch.nn.Module, s: torch.Tensor, targets: torch.Tensor,
                 weight: torch.Tensor | None, mix: Mix | None) -> torch.Tensor: ...


class CrossEntropy:
    """-log p(target), p being the repeat mixture when there is one."""

    def __call__(self, head: torch.nn.Module, s: torch.Tensor, targets: torch.Tensor,
                 weight: torch.Tensor | None, mix: Mix | None) -> torch.Tensor:
        logp = head.target_log_prob(s, targets, weight)
        return -(mix(logp) if mix is not None else logp).sum()


class BPRMax:
    """BPR-max with score regularisation `reg` on the head, plus the mixture's likelihood for the gate."""

    def __init__(self, reg: float) -> None:
        self.reg = reg

    def __call__(self, head: torch.nn.Module, s: torch.Tensor, targets: torch.Tensor,
                 weight: torch.Tensor | None, mix: Mix | None) -> torch.Tensor:
        ranking, logp = head.bpr_max(s, targets, weight, self.reg)
        return ranking.sum() - (mix(logp).sum() if mix is not None else 0.0)


def make_loss(cfg: ModelConfig) -> Loss:
    """The loss `model.loss` names (the config check makes sure that bpr_max comes with the sampled head)."""
    if cfg.loss == "bpr_max":
        return BPRMax(cfg.bpr_reg)
    return CrossEntropy()
