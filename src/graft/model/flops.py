"""How much arithmetic training a model costs: the figure behind achieved FLOP/s and MFU in
metrics.jsonl and in bench/train_throughput.py (one formula for both).

Per token, forward and backward, the PaLM / nanoGPT estimate:

    6 * N + 12 * n_layers * d_model * T

N counts the parameters that take part in matmuls: every block, the final norm and the heads.
Embedding lookups are not matmuls, so token, position and segment embeddings are left out, except
a token embedding tied to the LM head, which counts once, as the head. The second term is
attention's scores and weighted values over a context of T (the causal half is not discounted,
as in both references). Norms, activations and the softmax are not counted.
"""

from __future__ import annotations

from torch import nn

from graft.model.transformer import LanguageModel


def matmul_parameters(model: LanguageModel) -> int:
    head = model.lm_head.weight
    lookups = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, nn.Embedding) and m.weight is not head
    )
    return model.num_parameters() - lookups


def training_flops_per_token(model: LanguageModel, seq_len: int) -> float:
    config = model.config
    return 6 * matmul_parameters(model) + 12 * config.n_layers * config.d_model * seq_len
