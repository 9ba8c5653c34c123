"""The generation engine: many requests decoded together, with continuous batching.

Requests wait in a FIFO queue. Each `step()` first admits waiting requests into free slots of one
preallocated KV cache (model/kv_cache.py: SlotKVCache) and runs each new prompt alone (prefill,
batch 1, exactly as generate() runs it), then runs ONE forward pass of shape (running, 1) that
adds a token to every running sequence. A sequence that finishes leaves at once and its slot goes
to the next waiting request: the batch changes between steps, never within one.

Per-request exactness. Each request keeps its own SamplingParams, seeded torch.Generator,
penalty history and text stream, and its row of the batch's logits goes through the same
sampling.choose_next that generate() uses, drawing the same random numbers in the same order. So
what a request gets does not depend on what else is in the batch, and equals generate()'s output
for the same prompt and params. Alone, a request's arithmetic is generate()'s (the engine's fused
q/k/v matmul computes each output as the three separate ones do: with MKL on x86 the logits are
bit for bit the same). In a batch the float32 logits can differ from it in the last bits: the
BLAS kernels for a 1-row, a 2-row and a many-row matmul sum in different orders, and SDPA over a
padded, masked key span blocks its sums differently from SDPA over exactly the row's keys. Those
differences (~1e-7 relative) change a token only when two candidates tie to that precision;
tests/infer/test_engine.py checks token equality, and logprob agreement to 1e-5, under concurrency.

Threads. `step`, `embed`, `classify`, `score` and `attentions` hold one lock, so they never
interleave; `submit` and `cancel` only touch the queue and flags and never wait for a step.
`start()` runs a background thread that steps whenever there is work and sleeps on a condition
variable otherwise (what the server uses); without it, the caller drives `step()` (what
`generate()` does).

Speed (bench/decode_speed.py, figures in docs/benchmarks.md). At batch 1 on a CPU a decode step is
mostly reading every weight once, and the rest is ~100 small kernels and their Python. The engine
decodes with its own copy of the model whose attention projections are fused (one matmul for q, k
and v: `Attention.fuse_qkv`), sharing every other weight with the caller's model. `compile=True`
compiles the decode step (with Inductor's C++ wrapper on the CPU), which removes most of the
per-kernel overhead. `quantize="int8"` moves a quarter of the bytes and is about 2x faster (its
tokens differ from fp32's). Batching shares each weight read among the running rows, which is
where the engine's throughput comes from.

Not done here: a prompt is prefilled in one piece, so a long prompt pauses the running sequences
for its prefill (chunked prefill would interleave it with decode steps); there is no prefix
caching between requests.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from graft.data.tokenizer import Tokenizer
from graft.errors import GraftError
from graft.infer.generate import GeneratedToken, check_prompt
from graft.infer.requests import Completion, Event, Request, RequestHandle
from graft.infer.sampling import SamplingParams, TokenHistory, choose_next
from graft.infer.stream import TextStream
from graft.model.kv_cache import CacheView, SlotDecode, SlotKVCache
from graft.model.transformer import (
    Attention,
    Head,
    LanguageModel,
    ModelOutput,
    mean_pool,
    read_padded,
)

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Event",
    "QueueFull",
    "Request",
    "RequestHandle",
]

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 8  # sequences decoded together (KV cache slots)
    # Sum over running sequences of (prompt + max new tokens, capped at the context) stays within
    # this; a request that alone exceeds it is refused at submit.
    max_batch_tokens: int = 4096
    max_queue: int = 64  # waiting requests; submit raises QueueFull beyond it
    # int8: dynamic quantisation of nn.Linear on CPU (a copy)
    quantize: Literal["none", "int8"] = "none"
    compile: bool = False  # torch.compile the batched decode forward (float models; not with int8)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_batch_tokens", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.quantize not in ("none", "int8"):
            raise ValueError(
                f"EngineConfig.quantize must be 'none' or 'int8', got {self.quantize!r}"
            )
        if self.quantize == "int8" and self.compile:
            # torch.compile cannot trace dynamically quantised linears: every layer becomes its own
            # small graph, and bench/decode_speed.py measured that slower than int8 alone.
            raise ValueError(
                "EngineConfig: compile and quantize='int8' do not combine (compiling int8 linears "
                "is slower than int8 alone); choose one"
            )


class QueueFull(GraftError):
    """The engine's waiting queue is full; try again later (HTTP 429/503)."""


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    total_requests: int  # submitted since the engine was built
    prompt_tokens: int  # prefilled so far
    completion_tokens: int  # generated so far
    last_batch_size: int  # rows in the latest decode step
    max_batch: int
    kv_cache_bytes: int  # the whole preallocated cache
    kv_cache_bytes_per_slot: int


def _decoding_copy(model: LanguageModel) -> LanguageModel:
    """The engine's own copy of `model`: it shares every parameter and buffer with the caller's
    model except the attention projections, which it fuses (Attention.fuse_qkv). The caller's
    model is left as it was; the copy holds its q, k and v weights a second time while both live."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    decoding = copy.deepcopy(model, memo=shared)
    for module in decoding.modules():
        # Plain projections only: a LoRA layer (a served adapter checkpoint) computes more than its
        # base weight, so its attention keeps the three projections.
        if isinstance(module, Attention) and module.can_fuse_qkv:
            module.fuse_qkv()
    return decoding.eval()


class _CompiledDecodeView:
    """SlotDecode's step for torch.compile: everything it reads is a tensor, and every size it
    needs comes from a tensor's shape (batch rows from `positions`, key span from `span`), so one
    graph with symbolic sizes serves every step. Python ints there (slot lengths, the span) would be
    guarded on and change every step, recompiling each time. When every row has the same length
    (always so at batch 1) there is no mask and no position gather, as in the eager step: SDPA then
    runs its unmasked kernel. The caller advances the slot lengths after the step (advance is a
    no-op here: a list mutation would break the graph)."""

    def __init__(self, cache: SlotKVCache, view: SlotDecode) -> None:
        self.keys, self.values = cache.keys, cache.values
        device = cache.keys[0].device
        self.positions = torch.tensor(cache.lengths[: view.n], device=device)
        self.rows = torch.arange(view.n, device=device)
        self.span = torch.empty(0, view.span, device=device)  # only its shape is read
        self.position_ids: torch.Tensor | None = None
        self.attention_mask: torch.Tensor | None = None
        if not view.uniform:
            self.position_ids = self.positions[:, None]
            keys = torch.arange(view.span, device=device)
            self.attention_mask = (keys[None, :] <= self.positions[:, None])[:, None, None, :]

    @property
    def length(self) -> int:
        return self.span.shape[-1] - 1

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer], self.values[layer]
        n, span = self.rows.shape[0], self.span.shape[-1]
        if self.attention_mask is None:  # every row writes at the same position: a plain slice
            keys[:n, :, span - 1 : span] = k
            values[:n, :, span - 1 : span] = v
        else:
            keys[self.rows, :, self.positions] = k[:, :, 0]
            values[self.rows, :, self.positions] = v[:, :, 0]
        return keys[:n, :, :span], values[:n, :, :span]

    def advance(self, n: int) -> None:
        pass


@dataclass(eq=False)
class _Sequence:
    """A request inside the engine."""

    request: Request
    handle: RequestHandle
    cost: int  # its share of max_batch_tokens: prompt + budget
    budget: int  # tokens it may generate: max_new_tokens, capped by the context
    stream: TextStream
    generator: torch.Generator | None = None
    history: TokenHistory | None = None
    tokens: list[int] = field(default_factory=list)
    slot: int = -1

    @property
    def params(self) -> SamplingParams:
        return self.request.params

    def put(
        self,
        token: GeneratedToken | None,
        text: str,
        reason: FinishReason | None = None,
        error: str | None = None,
    ) -> None:
        """Hand the caller one event of this request."""
        prompt_tokens, completion_tokens = len(self.request.prompt_ids), len(self.tokens)
        rid = self.request.request_id
        self.handle._put(Event(rid, token, text, reason, prompt_tokens, completion_tokens, error))


class Engine:
    def __init__(
        self, model: LanguageModel, tokenizer: Tokenizer, config: EngineConfig = EngineConfig()
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        model = _decoding_copy(model)
        if config.quantize == "int8":
            from graft.infer.quantize import quantize_int8

            model = quantize_int8(model)
        self.model = model.eval()
        self.model_config = model.config
        # A built model always has its vocab_size (Transformer refuses a config without one).
        assert model.config.vocab_size is not None
        self.vocab_size = model.config.vocab_size
        # A float parameter (int8 quantisation keeps the embedding float) sets the cache's dtype.
        weight = next(p for p in model.parameters() if p.is_floating_point())
        self.device, self.dtype = weight.device, weight.dtype
        self.max_len = model.config.max_seq_len
        self.cache = SlotKVCache(
            model.config, config.max_batch, self.max_len, device=self.device, dtype=self.dtype
        )
        # The batched decode step is what repeats; prefill shapes vary with every prompt, so they
        # stay eager rather than recompiling. dynamic=True: batch size and key span change each
        # step. On the CPU, Inductor's C++ wrapper launches the step's kernels from C++ instead of
        # Python: at batch 1 a step is ~100 small kernels, whose Python launches cost more than
        # their work.
        if config.compile:
            # The cache's sizes never change: static, so that a batch as large as max_batch is not
            # "duck sized" into one symbol with the cache's rows (a guard the next, smaller batch
            # fails, recompiling the step).
            for tensor in (*self.cache.keys, *self.cache.values):
                torch._dynamo.mark_static(tensor)
        self._decode_forward: Callable[..., torch.Tensor] = (
            torch.compile(
                self._logits,
                dynamic=True,
                options={"cpp_wrapper": True} if self.device.type == "cpu" else None,
            )
            if config.compile
            else self._logits
        )
        self._lock = threading.Lock()  # step / embed / classify / score
        self._cond = threading.Condition()  # guards the queue; the background thread sleeps on it
        self._waiting: collections.deque[_Sequence] = collections.deque()
        # _running[i].slot == i: the running rows are slots 0..n-1
        self._running: list[_Sequence] = []
        self._used_tokens = 0  # sum of the running sequences' costs
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._total_requests = self._prompt_tokens = self._completion_tokens = self._last_batch = 0

    # -- requests -------------------------------------------------------------------------------

    def submit(self, request: Request) -> RequestHandle:
        """Queue a request; ValueError (with the reason) if it can never run, QueueFull if the
        queue is full now."""
        seq = self._check(request)
        with self._cond:
            if len(self._waiting) >= self.config.max_queue:
                raise QueueFull(
                    f"the engine's queue is full ({self.config.max_queue} waiting requests); "
                    "retry later"
                )
            self._waiting.append(seq)
            self._total_requests += 1
            self._cond.notify_all()
        return seq.handle

    def _check(self, request: Request) -> _Sequence:
        # The rule of `graft generate` too: a causal LM, and room for one new token.
        check_prompt(self.model, request.prompt_ids)
        n = len(request.prompt_ids)
        if bad := [i for i in request.prompt_ids if not 0 <= i < self.vocab_size]:
            raise ValueError(
                f"prompt token id {bad[0]} is outside the model's vocabulary "
                f"(0..{self.vocab_size - 1})"
            )
        budget = min(request.params.max_new_tokens, self.max_len - n)
        cost = n + budget
        if cost > self.config.max_batch_tokens:
            raise ValueError(
                f"the request needs {cost} tokens (prompt {n} + up to {budget} new), more than the "
                f"engine's max_batch_tokens ({self.config.max_batch_tokens}); "
                "shorten it or lower max_tokens"
            )
        # ValueError for an empty stop string
        stream = TextStream(self.tokenizer, stop=request.stop, context=request.prompt_ids)
        handle = RequestHandle(request.request_id, n, self._wake)
        return _Sequence(request, handle, cost, budget, stream)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- the scheduling step ----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> int:
        """Drop cancelled requests, admit waiting ones into free slots (prefilling each), then
        decode one token for every running sequence. Returns how many sequences are running."""
        with self._lock:
            self._end("cancelled", cancelled_only=True)
            self._admit()
            if self._running:
                self._decode()
            return len(self._running)

    def _admit(self) -> None:
        while len(self._running) < self.config.max_batch:
            with self._cond:
                # Strictly first come, first served: a large request at the head waits for room
                # rather than being overtaken forever by small ones.
                if (
                    not self._waiting
                    or self._used_tokens + self._waiting[0].cost > self.config.max_batch_tokens
                ):
                    return
                seq = self._waiting.popleft()
            self._start(seq)

    def _start(self, seq: _Sequence) -> None:
        """Give seq a slot, run its prompt, and choose its first token."""
        seq.slot = len(self._running)
        self._running.append(seq)
        self._used_tokens += seq.cost
        params, prompt = seq.params, seq.request.prompt_ids
        seq.generator = torch.Generator(device=self.device)
        if params.seed is not None:
            seq.generator.manual_seed(params.seed)
        else:
            seq.generator.seed()  # fresh entropy; the global RNG is left alone
        if params.has_penalties:
            seq.history = TokenHistory.from_prompts([prompt], self.vocab_size, device=self.device)
        self._prompt_tokens += len(prompt)
        try:
            ids = torch.tensor([prompt], device=self.device)
            logits = self._logits(ids, self.cache.prefill(seq.slot))
            reason = self._accept(seq, logits)
        except Exception as err:  # one bad request must not take the others down
            log.exception("engine: prefill of request %s failed", seq.request.request_id)
            self._leave(seq, "error", f"{type(err).__name__}: {err}")
            return
        if reason is not None:
            self._leave(seq, reason)

    def _logits(
        self,
        ids: torch.Tensor,
        kv_cache: CacheView,
        *,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (B, V) of each row's last position: prefill and the decode step."""
        logits = self.model(
            ids,
            kv_cache=kv_cache,
            position_ids=position_ids,
            attention_mask=attention_mask,
            last_only=True,
        ).logits
        assert logits is not None
        return logits[:, -1]

    def _decode(self) -> None:
        seqs = self._running
        self._last_batch = len(seqs)
        try:
            ids = torch.tensor([[s.tokens[-1]] for s in seqs], device=self.device)  # (B, 1)
            view = self.cache.decode(len(seqs))
            step = _CompiledDecodeView(self.cache, view) if self.config.compile else view
            logits = self._decode_forward(
                ids,
                position_ids=step.position_ids,
                attention_mask=step.attention_mask,
                kv_cache=step,
            )
            if step is not view:  # the compiled step's advance does nothing: advance here
                view.advance(1)
            finished = [
                (seq, reason)
                for row, seq in enumerate(seqs)
                if (reason := self._accept(seq, logits[row : row + 1])) is not None
            ]
        except Exception as err:
            log.exception("engine: decode step failed")
            message = f"{type(err).__name__}: {err}"
            for seq in sorted(seqs, key=lambda s: -s.slot):
                self._leave(seq, "error", message)
            return
        # Highest slot first: the sequence moved into a freed slot is then always one still running.
        for seq, reason in sorted(finished, key=lambda f: -f[0].slot):
            self._leave(seq, reason)

    def _accept(self, seq: _Sequence, logits: torch.Tensor) -> FinishReason | None:
        """Choose seq's next token from its logits (1, V) as generate_steps does, emit its event;
        return why the sequence ends with it, if it does."""
        params = seq.params
        choice = choose_next(logits, params, seq.generator, seq.history)
        token = GeneratedToken.chosen(choice, params)
        seq.tokens.append(token.id)
        self._completion_tokens += 1
        stop_id = token.id in params.stop_ids
        text = "" if stop_id else seq.stream.push(token.id)
        seq.put(token, text)
        if stop_id or seq.stream.stopped:
            return "stop"
        if len(seq.tokens) >= seq.budget:
            return "length"
        if seq.history is not None:
            seq.history.add(choice.ids)
        return None

    def _leave(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        """Take a running sequence out of the batch and send its final event. The last running
        sequence moves into the freed slot, so the running rows stay slots 0..n-1.

        Why compact rather than gather or mask: measured on the `small` preset (2-core Xeon, one
        thread, 256-token contexts), a decode step over all 8 slots with only one live costs 2.6x
        the step over that one row (43 vs 16 ms: the idle rows' matmul and attention are real
        work); gathering 4 scattered slots' keys and values into a batch costs 26 ms per step, as
        much as the 29 ms step itself. Moving a 256-token slot once, when its neighbour leaves,
        costs 1.6 ms."""
        last = self._running.pop()
        if last is not seq:
            self.cache.move(last.slot, seq.slot)
            last.slot = seq.slot
            self._running[seq.slot] = last
        else:
            self.cache.free(seq.slot)
        self._used_tokens -= seq.cost
        self._final(seq, reason, error)

    def _final(self, seq: _Sequence, reason: FinishReason, error: str | None = None) -> None:
        seq.put(None, "" if reason == "error" else seq.stream.flush(), reason, error)

    # -- synchronous use ------------------------------------------------------------------------

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Run every request to the end and return their completions in order. All are checked
        before any runs; those beyond the queue's room are submitted as room appears."""
        for request in requests:
            self._check(request)
        pending = collections.deque(requests)
        handles: list[RequestHandle] = []
        while pending or not all(h.done for h in handles):
            while pending:
                try:
                    handles.append(self.submit(pending[0]))
                except QueueFull:
                    break
                pending.popleft()
            unfinished = [h for h in handles if not h.done]
            if self._thread is None:
                self.step()
            elif unfinished:
                # the background thread is stepping: look again when one is done, or soon
                unfinished[0].wait(timeout=0.05)
            else:  # nothing of ours is in yet (others filled the queue): look again soon
                with self._cond:
                    self._cond.wait(timeout=0.05)
        return [h.result() for h in handles]

    # -- the background thread ------------------------------------------------------------------

    def start(self) -> None:
        """Step in a background thread whenever there is work (for servers). Idempotent."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="graft-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread, and cancel every waiting and running request so that no
        reader is left waiting for events that will never come."""
        thread = self._thread
        if thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            thread.join()
            self._thread = None
        with self._lock:
            self._end("cancelled")

    def _end(
        self, reason: FinishReason, error: str | None = None, *, cancelled_only: bool = False
    ) -> None:
        """End every waiting and running request (only the cancelled ones with cancelled_only):
        free its slot and send its final event. The caller holds the step lock."""
        with self._cond:
            gone = [s for s in self._waiting if s.handle.cancelled or not cancelled_only]
            for seq in gone:
                self._waiting.remove(seq)
        for seq in gone:
            self._final(seq, reason, error)
        ending = [s for s in self._running if s.handle.cancelled or not cancelled_only]
        for seq in sorted(ending, key=lambda s: -s.slot):
            self._leave(seq, reason, error)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._waiting or self._running)
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as err:
                # step() turns model errors into "error" events itself, so this is a bug in the
                # engine: end every request (so no reader hangs and the loop does not spin on the
                # same failure) and keep serving new ones.
                log.exception("engine: step failed")
                with self._lock:
                    self._end("error", f"{type(err).__name__}: {err}")

    # -- statistics -----------------------------------------------------------------------------

    @property
    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            total_requests=self._total_requests,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            last_batch_size=self._last_batch,
            max_batch=self.config.max_batch,
            kv_cache_bytes=self.cache.bytes_per_slot * self.config.max_batch,
            kv_cache_bytes_per_slot=self.cache.bytes_per_slot,
        )

    # -- whole-sequence uses: embeddings, classification, prompt scoring ---------------------------

    @torch.inference_mode()
    def embed(self, ids_batch: list[list[int]]) -> torch.Tensor:
        """Mean of the final hidden states over each input's tokens, float32 (N, d_model).

        The ids are model inputs, made from text by `graft.data.inputs.model_inputs` (an encoder's
        framed as [CLS] ... [SEP]); the mean covers every one of them, frame included."""
        out, real = self._read(ids_batch, [])
        return mean_pool(out.hidden, real).float()

    @torch.inference_mode()
    def classify(self, ids_batch: list[list[int]]) -> torch.Tensor:
        """Class probabilities (N, labels), float32, of a model with a sequence classifier head;
        the ids are model inputs, as for `embed` (an encoder's classifier reads [CLS])."""
        if self.model_config.head != "sequence":
            raise ValueError(
                "classification needs a model with a sequence classifier head; "
                f"this model's head is {self.model_config.head!r}"
            )
        logits = self._read(ids_batch, ["classifier"])[0].class_logits
        assert logits is not None
        return logits.softmax(dim=-1)

    @torch.inference_mode()
    def span_logits(self, ids_batch: list[list[int]], token_types: list[list[int]]) -> torch.Tensor:
        """Start and end logits (N, T, 2), float32 on the CPU, of a span (question-answering)
        model over question windows (`graft.data.qa.qa_windows`: ids and their segment ids)."""
        if self.model_config.head != "span":
            raise ValueError(
                "answering questions needs a model with a span head; "
                f"this model's head is {self.model_config.head!r}"
            )
        self._check_inputs(ids_batch)
        with self._lock:
            out, _ = read_padded(self.model, ids_batch, ["classifier"], token_types=token_types)
        assert out.class_logits is not None  # asked for above
        return out.class_logits.float().cpu()

    @torch.inference_mode()
    def score(self, ids: list[int], top: int = 0) -> list[GeneratedToken]:
        """Each prompt token after the first with its logprob given the tokens before it and the
        `top` most likely tokens in its place (most likely first): one forward pass over the whole
        prompt, what OpenAI's `echo` with `logprobs` reports (lm-evaluation-harness's
        loglikelihood). The distribution is the model's own, before any sampling settings."""
        if self.model_config.is_encoder:
            raise ValueError(
                "this model is an encoder (bidirectional attention): it does not score a prompt "
                "token by token"
            )
        logits = self._read([ids], ["lm"])[0].logits
        assert logits is not None
        # Position t predicts token t + 1; the last position predicts beyond the prompt.
        logprobs = logits[0, :-1].float().log_softmax(dim=-1)
        targets = torch.tensor(ids[1:], device=logprobs.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        if top:
            values, indices = logprobs.topk(top, dim=-1)
            alternatives = [
                list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)
            ]
        else:
            alternatives = [[] for _ in chosen]
        return [
            GeneratedToken(token, logprob, alts)
            for token, logprob, alts in zip(ids[1:], chosen, alternatives, strict=True)
        ]

    @torch.inference_mode()
    def attentions(self, ids: list[int]) -> torch.Tensor:
        """Every block's softmax attention weights over one input, float32 on the CPU, (L, H, T, T):
        the model once over the ids with output_attentions (what the server's /v1/attention maps,
        graft.insight.explain's view of a text)."""
        self._check_inputs([ids])
        tokens = torch.tensor([ids], device=self.device)
        with self._lock:
            out = self.model(tokens, heads=(), output_attentions=True)
        assert out.attentions is not None  # asked for above
        return torch.stack([layer[0] for layer in out.attentions]).float().cpu()

    def _read(
        self, ids_batch: list[list[int]], heads: list[Head]
    ) -> tuple[ModelOutput, torch.Tensor]:
        """The model over whole inputs (`read_padded`), once each is checked against the model's
        context and vocabulary."""
        self._check_inputs(ids_batch)
        with self._lock:
            return read_padded(self.model, ids_batch, heads)

    def _check_inputs(self, ids_batch: list[list[int]]) -> None:
        if not ids_batch:
            raise ValueError("no inputs given")
        vocab = self.vocab_size
        for i, ids in enumerate(ids_batch):
            if not ids:
                raise ValueError(f"input {i} is empty")
            if len(ids) > self.max_len:
                raise ValueError(
                    f"input {i} has {len(ids)} tokens; the model's context is {self.max_len}"
                )
            if not all(0 <= t < vocab for t in ids):
                raise ValueError(
                    f"input {i} holds a token id outside the model's vocabulary (0..{vocab - 1})"
                )
