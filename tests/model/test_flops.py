"""The FLOPs estimate behind MFU counts the matmul parameters: every Linear (a tied LM head once),
the norms, and no embedding lookup."""

from __future__ import annotations

import pytest
from torch import nn

from graft.model.config import preset
from graft.model.flops import matmul_parameters, training_flops_per_token
from graft.model.transformer import LanguageModel


@pytest.mark.parametrize("name", ["micro", "llama-micro", "bert-micro"])
def test_matmul_parameters_are_the_linear_layers_and_norms(name: str) -> None:
    model = LanguageModel(preset(name).model_copy(update={"vocab_size": 300}))
    linear = {
        id(p): p.numel()
        for m in model.modules()
        if isinstance(m, nn.Linear)
        for p in m.parameters()
    }
    norms = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm))
        for p in m.parameters()
    )
    assert matmul_parameters(model) == sum(linear.values()) + norms
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    tied_head = model.lm_head.weight.numel() if model.config.tie_embeddings else 0
    assert matmul_parameters(model) == model.num_parameters() - embeddings + tied_head
    c = model.config
    assert training_flops_per_token(model, 64) == 6 * matmul_parameters(model) + (
        12 * c.n_layers * c.d_model * 64
    )


def test_measuring_the_cpu_peak_leaves_the_global_generator_alone() -> None:
    """The peak is measured once per process, at a run's start: drawing its random matrices
    from the global generator made a resumed run's dropout differ from an unbroken one's."""
    import torch

    from graft.device import _cpu_matmul_peak

    before = torch.get_rng_state()
    assert _cpu_matmul_peak.__wrapped__(n=32, repeats=1) > 0
    assert torch.equal(torch.get_rng_state(), before)
