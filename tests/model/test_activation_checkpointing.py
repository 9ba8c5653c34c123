"""train.activation_checkpointing: the same gradients (dropout draws replayed), far fewer saved
activations."""

from __future__ import annotations

import pytest
import torch

from graft.model.config import preset
from graft.model.transformer import LanguageModel


def _step(name: str, recompute: bool) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of one training forward and backward, and the bytes autograd kept for backward."""
    config = preset(name).model_copy(
        update={"vocab_size": 256, "max_seq_len": 64, "n_layers": 4, "dropout": 0.1}
    )
    torch.manual_seed(0)
    model = LanguageModel(config).train()
    model.checkpoint_activations(recompute)
    x = torch.randint(0, 256, (4, 65), generator=torch.Generator().manual_seed(1))
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(2)  # the dropout draws
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(x[:, :-1], heads=["lm"], targets=x[:, 1:]).lm_loss
    assert loss is not None
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, saved


@pytest.mark.parametrize("name", ["micro", "llama-micro"])
def test_recomputed_blocks_give_the_same_gradients_from_fewer_saved_bytes(name: str) -> None:
    kept, kept_bytes = _step(name, recompute=False)
    recomputed, recomputed_bytes = _step(name, recompute=True)
    assert kept.keys() == recomputed.keys()
    for key in kept:
        torch.testing.assert_close(recomputed[key], kept[key], rtol=1e-5, atol=1e-7, msg=key)
    assert recomputed_bytes < kept_bytes / 3, (recomputed_bytes, kept_bytes)
