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


def test_under_autocast_every_product_runs_in_its_dtype():
    """In-place addmm_ escapes autocast: the weight gradient's V x C x N product ran in fp32
    under bf16 training (many times slower on a GPU). Every product now runs in bf16, and the
    gradients are as close to fp32's as autocast's own cross-entropy gives."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Products(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.dtypes: list[torch.dtype] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("mm", "addmm", "addmm_", "matmul", "bmm"):
                self.dtypes += [a.dtype for a in args if isinstance(a, torch.Tensor)]
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    hidden, weight = torch.randn(1100, 64), torch.randn(300, 64) * 0.1
    targets = torch.randint(0, 300, (1100,))

    def grads(loss_of, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = loss_of(h, w)
        loss.float().backward()
        return h.grad, w.grad

    products = Products()
    with products:
        fused = grads(lambda h, w: linear_cross_entropy_sum(h, w, targets), True)
    assert products.dtypes and set(products.dtypes) == {torch.bfloat16}
    exact = grads(lambda h, w: F.cross_entropy(h @ w.T, targets, reduction="sum"), False)
    amp = grads(lambda h, w: F.cross_entropy((h @ w.T).float(), targets, reduction="sum"), True)
    for ours, theirs, truth in zip(fused, amp, exact):
        error = float((ours - truth).norm() / truth.norm())
        assert error <= 1.1 * float((theirs - truth).norm() / truth.norm()) + 1e-6
