"""The HTTP API's request and response bodies, in OpenAI's shapes, as pydantic models.

Requests carry their limits as field constraints, so FastAPI rejects a bad value before any
handler runs and /openapi.json states the same limits a client is held to. Fields OpenAI defines
but graft does not implement (best_of, logit_bias, suffix, tools, response_format) are
modelled too, so a client that sets one gets a 400 naming it instead of being silently ignored.
Extensions beyond OpenAI (top_k, min_p, repetition_penalty, /v1/classify, a model's card) are
marked as such in their descriptions. Unknown fields are ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from graft.infer.sampling import MAX_ABS_PENALTY, MAX_LOGPROBS, MAX_SEED

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_BATCH_INPUTS = 256  # texts per /v1/embeddings or /v1/classify request

TokenId = Annotated[int, Field(ge=0)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
Texts = Annotated[list[str], Field(min_length=1, max_length=MAX_BATCH_INPUTS)]
TokenIdLists = Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_BATCH_INPUTS)]
# A batch's empty prompt is refused by the route, which can name it (prompt[2]): as a union
# branch's failure it would be reported as whichever branch failed first.
PromptIdLists = Annotated[list[list[TokenId]], Field(min_length=1, max_length=MAX_BATCH_INPUTS)]


class RequestBody(BaseModel):
    # Unknown fields are ignored (newer OpenAI clients send fields older servers lack); known ones
    # are checked strictly by type: "0.5" is not a temperature, 1 is not true, NaN is not a number.
    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(RequestBody):
    include_usage: bool = Field(False, description="Send a last chunk with usage and no choices.")


class SamplingFields(RequestBody):
    """Sampling fields common to /v1/completions and /v1/chat/completions."""

    model: str | None = Field(
        None, description="The served model's id (GET /v1/models); omitted means that model."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Most tokens to generate; prompt plus these must fit the context."
    )
    temperature: float = Field(1.0, ge=0, le=2, description="0 (or below 1e-5) is greedy decoding.")
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Nucleus sampling: keep the smallest set reaching this probability.",
    )
    top_k: int = Field(
        0, ge=0, description="Extension: keep the k most likely tokens; 0 keeps all."
    )
    min_p: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Extension: drop tokens below min_p times the top probability; 0 is off.",
    )
    frequency_penalty: float = Field(0.0, ge=-MAX_ABS_PENALTY, le=MAX_ABS_PENALTY)
    presence_penalty: float = Field(0.0, ge=-MAX_ABS_PENALTY, le=MAX_ABS_PENALTY)
    # Bounded away from 0: logits divided by a tiny penalty overflow to inf.
    repetition_penalty: float = Field(
        1.0, ge=0.01, le=10, description="Extension: > 1 discourages tokens already present (CTRL)."
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="Same seed, same request: same output."
    )
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None, description=f"Up to {MAX_STOP_STRINGS} strings; the text ends before the first."
    )
    stream: bool = Field(
        False,
        description="Send server-sent events, one chunk per piece of text, then `data: [DONE]`.",
    )
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Choices per request: only 1 is supported.")
    logit_bias: dict[str, float] | None = Field(
        None, description="Not supported: must be absent or empty."
    )
    user: str | None = Field(None, description="Accepted and ignored.")


class CompletionRequest(SamplingFields):
    prompt: str | TokenIds | Texts | PromptIdLists = Field(
        ...,
        description="Text or token ids, or a list of either (a batch: one choice each, in order, "
        "not streamed). An empty string starts a fresh document.",
    )
    max_tokens: int | None = Field(
        16,
        ge=0,
        description="Most tokens to generate (default 16, as OpenAI); 0 only with echo, which "
        "then scores the prompt and generates nothing.",
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Report each token's logprob and this many most likely alternatives.",
    )
    echo: bool = Field(
        False,
        description="Return the prompt before the generated text and, with logprobs, each prompt "
        "token's logprob (the first token's is null) and alternatives; not streamed.",
    )
    best_of: int | None = Field(None, ge=1, le=1, description="Not supported beyond 1.")
    suffix: str | None = Field(None, description="Not supported: must be absent.")


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        ..., description="developer is read as system (OpenAI's newer name for it)."
    )
    content: str | list[TextPart] | None = Field(..., description="Text, or text parts (joined).")
    name: str | None = Field(None, description="Accepted and ignored.")


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(
        None, ge=1, description="OpenAI's newer name for max_tokens; wins over it."
    )
    logprobs: bool = Field(False, description="Report each token's logprob.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="Alternatives per token; needs logprobs."
    )
    tools: list[dict[str, Any]] | None = Field(
        None, description="Not supported: must be absent or empty."
    )
    response_format: dict[str, Any] | None = Field(
        None, description='Only {"type": "text"} is supported.'
    )


class EmbeddingRequest(RequestBody):
    input: str | Texts | TokenIds | TokenIdLists = Field(
        ...,
        description="Text, texts, token ids or lists of token ids; "
        "each becomes one mean-pooled vector.",
    )
    model: str | None = None
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Must equal the model's width when given."
    )
    user: str | None = None


class ClassifyRequest(RequestBody):
    """Extension: label texts with a checkpoint fine-tuned for sequence classification."""

    input: str | Texts
    model: str | None = None


# -- responses --------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    # null for an echoed prompt's first token: nothing before it to predict it from
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Classification(BaseModel):
    index: int
    label: str = Field(..., description="The most probable label.")
    probabilities: dict[str, float] = Field(
        ..., description="Every label's probability, in the model's label order."
    )


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Classification]
    model: str
    usage: Usage


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "graft"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelFacts(BaseModel):
    """Extension: what the playground and a curious client want to know about the served model."""

    kind: str = Field(
        ..., description="causal LM, encoder, sequence/token classifier, or question answering"
    )
    parameters: int
    context_length: int
    vocab_size: int
    layers: int
    d_model: int
    heads: int
    head: str
    labels: list[str]
    tokenizer: str
    chat_template: bool = Field(
        ..., description="Whether the tokenizer carries its own chat template."
    )
    quantize: str
    max_batch: int
    card: str = Field(
        ...,
        description="The checkpoint's README.md, or a summary written from its config (markdown).",
    )


class ModelDetail(ModelObject):
    graft: ModelFacts


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    running: int
    waiting: int
