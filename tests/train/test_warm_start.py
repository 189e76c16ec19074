"""`train --warm-start`: a new run starts from a registered model's weights, grown by rows for the tracks
the append-only dictionary gained since, on a real lake, real training runs and a sqlite registry."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nextplay.config import ConfigError, load_config
from nextplay.model.session import SessionModel

# The network alone: no repeat mixture and no session memory, so old items' scores depend on the
# head's logits only, and growing the catalog only moves the softmax's normaliser.
NETWORK_ONLY = ["model.hidden_size=16", "model.repeat=false", "model.hybrid.knn_weight=0",
                "model.hybrid.knn_explore_weight=0"]


def _model(n_items: int, *overrides: str) -> SessionModel:
    torch.manual_seed(0)
    return SessionModel(n_items, load_config(None, [*NETWORK_ONLY, *overrides]).model, np.ones(n_items + 1)).eval()


@pytest.mark.parametrize("encoder,head,tied", [("gru", "full", True), ("sasrec", "full", True),
                                               ("gru", "sampled", False), ("sasrec", "sampled", False)])
def test_growing_keeps_every_old_row_and_weight_and_the_old_items_ranking(encoder, head, tied):
    old = _model(20, f"model.encoder={encoder}", f"model.head={head}", f"model.tie_embeddings={str(tied).lower()}")
    with torch.no_grad():  # learnt-looking biases, so that a copy that dropped them would show
        for p in old.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    grown = old.grown(27, np.ones(28)).eval()
    assert grown.n_items == 27 and grown.head.n_items == 27
    before, after = old.state_dict(), grown.state_dict()
    assert set(before) == set(after)
    rows = set(old.item_tables())
    assert rows == {"embedding.weight", "head.bias"} | (set() if tied else {"output_items"})
    for name, value in before.items():
        if name in rows:
            assert after[name].shape[0] == 28
            assert torch.equal(after[name][:21], value), name
        else:
            assert torch.equal(after[name], value), name
    # New rows are drawn as a fresh model draws them: not copies of old ones, not zero where fresh is random.
    assert after["embedding.weight"][21:].std() > 0.01
    assert not torch.equal(after["embedding.weight"][21:], after["embedding.weight"][:7])

    items = torch.tensor([[3, 7, 12, 5], [19, 1, 0, 0], [8, 0, 0, 0]])
    lengths = torch.tensor([4, 2, 1])
    s_old, s_new = old.score_all(items, lengths)[:, 1:], grown.score_all(items, lengths)[:, 1:21]
    # The same logits over the old items: the log-probabilities move by one constant per history.
    shift = s_new - s_old
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)
    assert torch.allclose(torch.log_softmax(s_new, 1), torch.log_softmax(s_old, 1), atol=1e-5)


def test_growing_refuses_to_shrink_and_the_bit_tree():
    with pytest.raises(ValueError, match="cannot shrink"):
        _model(20).grown(19)
    with pytest.raises(ValueError, match="bit_tree cannot gain items"):
        _model(20, "model.head=bit_tree").grown(21)


def test_warm_start_with_resume_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="train.warm_start and train.resume"):
        load_config(None, ["train.warm_start=champion", "train.resume=true"])
    assert load_config(None, ["train.warm_start=models:/nextplay/3"]).train.warm_start == "models:/nextplay/3"
