"""The fused linear + cross-entropy equals the textbook loss, in value and gradient."""

import pytest
import torch
import torch.nn.functional as F

from graft.data.records import IGNORE_INDEX
from graft.model import losses
from graft.model.losses import linear_cross_entropy_sum


@pytest.mark.parametrize("rows", [7, 512, 1300])  # below, at and across the chunk size
def test_matches_cross_entropy_of_full_logits(rows):
    torch.manual_seed(0)
    hidden = torch.randn(rows, 24, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 24, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (rows,))
    targets[::3] = IGNORE_INDEX
    expected = F.cross_entropy(
        hidden @ weight.T, targets, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    g_hidden, g_weight = torch.autograd.grad(expected * 0.37, (hidden, weight))
    got = linear_cross_entropy_sum(hidden, weight, targets)
    torch.testing.assert_close(got, expected)
    f_hidden, f_weight = torch.autograd.grad(got * 0.37, (hidden, weight))
    torch.testing.assert_close(f_hidden, g_hidden)
    torch.testing.assert_close(f_weight, g_weight)


def test_all_ignored_gives_zero_and_no_grad_mode_skips_gradients(monkeypatch):
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    assert linear_cross_entropy_sum(hidden, weight, torch.full((4,), IGNORE_INDEX)).item() == 0.0
    with torch.no_grad():
        value = linear_cross_entropy_sum(hidden, weight, torch.tensor([1, 2, 3, 4]))
    assert value.item() > 0 and not value.requires_grad
    assert losses._CHUNK_ROWS >= 1
