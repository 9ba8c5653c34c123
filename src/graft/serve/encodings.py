"""/v1/embeddings and /v1/classify: requests that read text without generating any.

Each input is one forward pass's worth of tokens, turned into model inputs by
`graft.data.inputs.model_inputs` exactly as fine-tuning and `graft eval` turn texts into them (an
encoder reads `[CLS] text [SEP]`). The engine mean-pools the final hidden states over every token
the model read, frame included (embeddings, as sentence-transformers' mean pooling does), or runs
the classification head (classify). Those forward passes, and the tokenizing before them, run in
worker threads, so the event loop keeps streaming other requests' tokens meanwhile.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from graft.data.inputs import model_inputs
from graft.data.tokenizer import Tokenizer
from graft.infer.engine import Engine
from graft.serve.completions import check_model
from graft.serve.http_errors import APIError
from graft.serve.metrics import ServeMetrics
from graft.serve.model_info import ModelInfo
from graft.serve.schemas import (
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    Embedding,
    EmbeddingRequest,
    EmbeddingResponse,
    Usage,
)

if TYPE_CHECKING:
    import torch

Inputs = str | list[str] | list[int] | list[list[int]]


def input_ids(inputs: Inputs, tokenizer: Tokenizer, info: ModelInfo) -> list[list[int]]:
    """The ids the model reads per input, each checked to be non-empty, in the vocabulary and
    within the context. Texts and token ids alike (ids are a text's tokens without special
    tokens) go through `model_inputs`, the path fine-tuning and `graft eval` take, so an encoder
    reads `[CLS] text [SEP]` here exactly as it was trained."""
    # A text's bare tokens first, so that an empty text is refused rather than read as [CLS] [SEP].
    if isinstance(inputs, str):
        bare: list[list[int]] = [tokenizer.encode(inputs)]
    elif not inputs:
        bare = []  # set apart, so that inputs[0] below tells which kind of list this is
    elif isinstance(inputs[0], str):
        bare = [tokenizer.encode(text) for text in inputs]
    elif isinstance(inputs[0], int):
        bare = [list(inputs)]
    else:
        bare = [list(ids) for ids in inputs]
    # Never cut: an input longer than the context is refused, as OpenAI's API refuses it.
    batch = model_inputs(tokenizer, bare, framed=info.config.is_encoder, max_len=None).ids
    vocab, context = info.config.vocab_size or tokenizer.vocab_size, info.input_context
    for i, (text_ids, ids) in enumerate(zip(bare, batch)):
        where = "input" if len(batch) == 1 else f"input[{i}]"
        if not text_ids:
            raise APIError(400, f"{where}: empty; give some text", param="input")
        if len(ids) > context:
            framing = len(ids) - len(text_ids)
            with_frame = f" ({framing} of them framing the text)" if framing else ""
            raise APIError(
                400,
                f"{where}: {len(ids)} tokens{with_frame}; the model reads at most {context}"
                + (" (the context it was trained on)" if info.trained_context else ""),
                param="input",
                code="context_length_exceeded",
            )
        if (bad := max(text_ids)) >= vocab:
            raise APIError(
                400,
                f"{where}: token id {bad} is outside the vocabulary (0..{vocab - 1})",
                param="input",
            )
    return batch


def encoding_routes(engine: Engine, info: ModelInfo, metrics: ServeMetrics) -> APIRouter:
    router = APIRouter()
    tokenizer = engine.tokenizer

    async def forward(
        method: Callable[[list[list[int]]], torch.Tensor], inputs: Inputs
    ) -> tuple[torch.Tensor, Usage]:
        """`method` (engine.embed or engine.classify) run on the inputs in a worker thread."""
        # Tokenizing too: a long input tokenized on the event loop would hold every other
        # request, /health included, until it is done.
        batch = await run_in_threadpool(input_ids, inputs, tokenizer, info)
        out = (await run_in_threadpool(method, batch)).float().cpu()
        tokens = sum(len(ids) for ids in batch)
        metrics.add_tokens(tokens, 0)
        return out, Usage(prompt_tokens=tokens, total_tokens=tokens)

    @router.post(
        "/v1/embeddings",
        response_model=EmbeddingResponse,
        tags=["OpenAI"],
        summary="Mean-pooled hidden states of each input",
    )
    async def embeddings(body: EmbeddingRequest) -> EmbeddingResponse:
        check_model(body.model, info)
        if body.dimensions is not None and body.dimensions != info.config.d_model:
            raise APIError(
                400,
                f"dimensions: this model's embeddings have {info.config.d_model} dimensions "
                f"(it cannot shorten them); got {body.dimensions}",
                param="dimensions",
            )
        vectors, usage = await forward(engine.embed, body.input)
        data = [
            Embedding(index=i, embedding=_encode(vector, body.encoding_format))
            for i, vector in enumerate(vectors.numpy())
        ]
        return EmbeddingResponse(data=data, model=info.name, usage=usage)

    @router.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        tags=["graft"],
        summary="Extension: label texts with a sequence classifier",
    )
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        check_model(body.model, info)
        if info.config.head != "sequence":
            raise APIError(
                400,
                f"model {info.name!r} has no sequence classification head (it is {info.a_kind}); "
                "/v1/classify serves checkpoints from `graft finetune classify`",
                param="model",
                code="no_classification_head",
            )
        texts = [body.input] if isinstance(body.input, str) else body.input
        probs, usage = await forward(engine.classify, texts)
        labels = info.config.labels
        data = [
            Classification(
                index=i,
                label=labels[int(np.argmax(row))],
                probabilities=dict(zip(labels, row, strict=True)),
            )
            for i, row in enumerate(probs.tolist())
        ]
        return ClassifyResponse(data=data, model=info.name, usage=usage)

    return router


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what OpenAI's Python client asks for by default
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
