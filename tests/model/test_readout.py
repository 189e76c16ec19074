"""The readout's repeat branch can learn without reshaping the network's states (`model.repeat_detached`)."""
from __future__ import annotations

import pytest
import torch

from nextplay.model.readout import SessionReadout


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("detach", [False, True])
def test_detached_repeat_branch_sends_no_gradient_to_the_states(attention: bool, detach: bool) -> None:
    torch.manual_seed(0)
    readout = SessionReadout(6, 6, attention=attention, repeat=True)
    h = torch.randn(2, 4, 6, requires_grad=True)
    ro = readout(h, torch.tensor([4, 2]), last_only=False, detach_repeat=detach)
    pointer = torch.where(torch.isfinite(ro.pointer_logits), ro.pointer_logits, 0.0)
    (ro.gate_logit.sum() + pointer.sum()).backward(retain_graph=True)
    assert (h.grad is not None and h.grad.abs().sum() > 0) != detach
    assert readout.gate.weight.grad.abs().sum() > 0 and readout.pointer_query.weight.grad.abs().sum() > 0
    h.grad = None
    ro.session.sum().backward()
    assert h.grad.abs().sum() > 0  # the session vector keeps its gradient either way
