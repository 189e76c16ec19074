"""Truncated backpropagation through time: the same states, gradients cut between steps."""
from __future__ import annotations

import pytest
import torch

from nextplay.model.cells import RecurrentStack


def _stack(cell: str) -> RecurrentStack:
    torch.manual_seed(0)
    return RecurrentStack(cell, input_size=4, hidden_size=5, num_layers=2, dropout=0.0)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_states_do_not_depend_on_the_truncation(cell: str) -> None:
    stack = _stack(cell)
    x = torch.randn(3, 7, 4)
    assert torch.allclose(stack(x, truncate=True), stack(x), atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_gradient_reaches_back_exactly_to_the_step(cell: str) -> None:
    """Step 5's state, truncated: input 5 alone gets gradient; without truncation every earlier input does."""
    stack = _stack(cell)
    for truncate, reached in ((True, [5]), (False, [0, 1, 2, 3, 4, 5])):
        x = torch.randn(2, 7, 4, requires_grad=True)
        stack(x, truncate=truncate)[:, 5].sum().backward()
        touched = [t for t in range(7) if x.grad[:, t].abs().sum() > 0]
        assert touched == reached, (truncate, touched)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_last_step_states_and_gradients_match_one_step_truncation(cell: str) -> None:
    """Lane steps' shortcut: the same states at every real position, and, for a loss on each row's
    last state, the same gradients as one-step truncation, from the last input alone."""
    stack = _stack(cell)
    lengths = torch.tensor([7, 1, 4])
    x = torch.randn(3, 7, 4)
    real = torch.arange(7)[None, :] < lengths[:, None]
    rows = torch.arange(3)
    grads = []
    for fast in (True, False):
        stack.zero_grad()
        xi = x.clone().requires_grad_()
        h = stack.last_step(xi, lengths, xi[rows, lengths - 1]) if fast else stack(xi, truncate=True)
        if fast:
            assert torch.allclose(h[real], stack(x)[real], atol=1e-6)
        h[rows, lengths - 1].pow(2).sum().backward()
        touched = [[t for t in range(7) if xi.grad[r, t].abs().sum() > 0] for r in range(3)]
        assert touched == [[6], [0], [3]]
        grads.append([p.grad.clone() for p in stack.parameters()])
    for fast_grad, slow_grad in zip(*grads):
        assert torch.allclose(fast_grad, slow_grad, atol=1e-6)
