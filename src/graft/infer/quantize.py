"""Post-training int8 quantisation of a model for CPU inference.

Dynamic quantisation (torch.ao): every nn.Linear's weights are stored as int8 with one scale per
output row, activations are quantised on the fly per call, and the products accumulate in int32.
Decoding one token at a time reads every weight once per step, so on a CPU it is bound by memory
traffic; weights a quarter the size are what make it faster. Embeddings, norms and the KV cache
stay float32. The result is a copy: the caller's model is not changed.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from graft.model.transformer import LanguageModel


def quantize_int8(model: LanguageModel) -> LanguageModel:
    """An int8 dynamically quantised copy of `model` (eval mode) for CPU inference."""
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU; the model is on {device}")
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao (and quantised tensor creation
        # its deprecation); the API still does what we need, and the tests pin that it works.
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        quantized = torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear}, dtype=torch.qint8, inplace=False
        )
    return quantized.eval()
