"""`graft explain`: how a model read one text, as PNG files and an HTML page beside them.

The text goes through the one text -> ids path (graft.data.inputs.model_inputs), cut to the
model's context when longer, with a note of what was left out. Everything below comes from the
model's one entry point, `model(...)`, with the options asked for explicitly:

- attention maps: every head's softmax weights, layer by layer (`output_attentions`);
- attention rollout (Abnar & Zuidema 2020): heads averaged, the residual connection added as the
  identity, rows renormalised, and the layers multiplied through: how much each token reaches
  each position at the top;
- per-token loss (causal LMs): each token's surprisal given the ones before it, -ln p, in nats;
- logit lens (models with an LM head): each layer's residual stream read by the final norm and the
  LM head (`output_hidden_states`, `LanguageModel.lm_logits_of`): what each layer would predict;
- integrated gradients (sequence classifiers): each token's share of the chosen label's logit,
  against a baseline of zero token embeddings (positions and token types kept), by the trapezoid
  rule along the straight path (`inputs_embeds`); the page reports how far the shares' sum is
  from the logit's change (completeness).

`explain_text` computes an Explanation; `graft.insight.explain_page` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from graft.data.inputs import input_frame, model_inputs
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError
from graft.model.transformer import LanguageModel
from graft.run_files import EXPLAIN_DIR, run_dir_of

__all__ = [
    "Attribution",
    "ExplainOptions",
    "Explanation",
    "LogitLens",
    "attention_rollout",
    "explain",
    "explain_text",
    "integrated_gradients",
]

# Interpolation points evaluated in one forward pass: bounds the memory of a long text.
_IG_BATCH = 16


@dataclass(frozen=True)
class ExplainOptions:
    """What `graft explain` was asked; every default lives here."""

    checkpoint: Path
    text: str
    out: Path | None = None  # default: RUN/explain (run_files.EXPLAIN_DIR) of the run it is in
    label: str | None = None  # sequence classifiers: the label to attribute (default: predicted)
    steps: int = 48  # integrated gradients: intervals of the trapezoid rule
    device: str = "cpu"


@dataclass(frozen=True)
class Attribution:
    """Integrated gradients for one label of a sequence classifier: each token's share of the
    label's logit, measured from a baseline of zero token embeddings."""

    label: str
    predicted: str  # the label the model chose for the text
    scores: list[float]  # per token, summed over the embedding dimensions
    logit: float  # the label's logit for the text
    baseline_logit: float  # ... and for the baseline
    steps: int

    @property
    def total(self) -> float:
        return float(sum(self.scores))

    @property
    def gap(self) -> float:
        """What the scores should sum to (completeness): logit - baseline_logit."""
        return self.logit - self.baseline_logit

    @property
    def completeness_error(self) -> float:
        """|sum of scores - gap| as a share of |gap|."""
        return abs(self.total - self.gap) / max(abs(self.gap), 1e-12)


@dataclass(frozen=True)
class LogitLens:
    """Per layer (the embeddings, then each block) and position: the LM head's top token there
    and its probability."""

    tokens: list[list[str]]  # (L + 1, T)
    probs: np.ndarray  # (L + 1, T)
    reads: str  # what the head predicts at a position: the next token, or the token itself


@dataclass
class Explanation:
    """Everything `graft explain` shows for one text."""

    title: str
    kind: str  # "causal LM", "masked LM (encoder)", "sequence classifier", ...
    ids: list[int]
    tokens: list[str]  # each id's text, as the tokenizer decodes it alone
    attentions: np.ndarray  # (L, H, T, T) softmax weights
    rollout: np.ndarray  # (T, T): row i, how much each token reaches position i at the top
    read_at: list[int]  # the positions a prediction is read from (rollout's row to show)
    surprisal: list[float | None] | None = None  # per token in nats; None where nothing predicts
    lens: LogitLens | None = None
    attribution: Attribution | None = None
    notes: list[str] = field(default_factory=list)  # what was cut or left out, and why


def explain(options: ExplainOptions) -> tuple[Path, Explanation]:
    """Load the checkpoint, explain the text, and write the PNGs and index.html into
    options.out (replaced whole, atomically). Returns index.html's path and the Explanation."""
    from graft.checkpoint import load_model
    from graft.device import resolve_device
    from graft.insight.explain_page import write_page

    if options.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {options.steps}")
    out, run = options.out, run_dir_of(options.checkpoint)
    if out is None:
        if run is None:
            raise ConfigError(
                f"--out: {options.checkpoint} is not in a run directory; say where to write"
            )
        out = run / EXPLAIN_DIR
    _check_replaceable(out)
    model, tokenizer = load_model(
        options.checkpoint, device=resolve_device(options.device, what="--device")
    )
    explanation = explain_text(
        model,
        tokenizer,
        options.text,
        label=options.label,
        steps=options.steps,
        title=str(options.checkpoint),
    )
    return write_page(explanation, out), explanation


def _kind(model: LanguageModel) -> str:
    config = model.config
    if config.head == "sequence":
        return "sequence classifier"
    if config.head == "token":
        return "token classifier"
    if config.head == "span":
        return "question-answering (span) model"
    return "masked LM (encoder)" if config.is_encoder else "causal LM"


def explain_text(
    model: LanguageModel,
    tokenizer: Tokenizer,
    text: str,
    *,
    label: str | None = None,
    steps: int = 48,
    title: str = "",
) -> Explanation:
    """Explain how `model` reads `text` (see the module docstring). `label` picks the label a
    sequence classifier's attributions are for (default: the one it predicts)."""
    config = model.config
    kind = _kind(model)
    if label is not None and config.head != "sequence":
        raise ConfigError(f"--label is for sequence classifiers; this checkpoint is a {kind}")
    if label is not None and label not in config.labels:
        raise ConfigError(
            f"--label {label!r} is not one of the model's labels: {', '.join(config.labels)}"
        )
    framed = config.is_encoder
    inputs = model_inputs(tokenizer, [text], framed=framed, max_len=config.max_seq_len)
    ids = inputs.ids[0]
    frame = input_frame(tokenizer, framed=framed)
    if len(ids) <= frame.size:
        raise ConfigError("--text has no tokens: give a text to explain")
    notes = []
    if inputs.truncated[0]:
        notes.append(
            _cut_note(tokenizer, text, ids[len(frame.before) : len(ids) - len(frame.after)])
        )

    device = next(model.parameters()).device
    tensor = torch.tensor([ids], device=device)
    heads = ("classifier",) if config.head != "lm" else ("lm",)
    with torch.no_grad():
        out = model(tensor, heads=heads, output_attentions=True, output_hidden_states=True)
    assert out.attentions is not None and out.hidden_states is not None  # asked for above
    attentions = torch.stack([a[0] for a in out.attentions]).float().cpu().numpy()
    T = len(ids)
    # A decoder's prediction is read at its last token; an encoder's sequence classifier reads
    # the pooled first one ([CLS]); mean pooling reads them all.
    if config.head == "sequence" and config.classifier_pooling == "mean":
        read_at = list(range(T))
    elif config.head == "sequence" and config.is_encoder:
        read_at = [0]
    else:
        read_at = [T - 1]
    explanation = Explanation(
        title=title,
        kind=kind,
        ids=ids,
        tokens=[tokenizer.decode([i]) for i in ids],
        attentions=attentions,
        rollout=attention_rollout(attentions),
        read_at=read_at,
        notes=notes,
    )
    if config.head == "lm":
        with torch.no_grad():
            explanation.lens = _logit_lens(model, tokenizer, out.hidden_states)
        if not config.is_encoder:
            assert out.logits is not None  # the LM head was asked for
            explanation.surprisal = _surprisal(out.logits[0], tensor[0])
        else:
            notes.append(
                "no per-token loss: an encoder sees every token at once, so it predicts no "
                "next token"
            )
    else:
        notes.append(f"no per-token loss and no logit lens: a {kind} has no trained LM head")
    if config.head == "sequence":
        assert out.class_logits is not None  # the classifier head was asked for
        predicted = config.labels[int(out.class_logits[0].argmax())]
        target = predicted if label is None else label
        scores, logit, baseline = integrated_gradients(
            model, tensor[0], config.labels.index(target), steps=steps
        )
        explanation.attribution = Attribution(
            label=target,
            predicted=predicted,
            scores=scores.tolist(),
            logit=logit,
            baseline_logit=baseline,
            steps=steps,
        )
    elif config.head in ("token", "span"):
        notes.append(f"no attribution: a {kind} makes one prediction per token")
    else:
        notes.append("no attribution: integrated gradients explain a sequence classifier's label")
    return explanation


def _cut_note(tokenizer: Tokenizer, text: str, kept: list[int]) -> str:
    """What a text cut to the context lost: said in characters, the unit the user wrote in."""
    shown = len(tokenizer.decode(kept))  # decoding may differ slightly: hence "about"
    last = tokenizer.decode(kept[-1:]).strip() or tokenizer.decode(kept[-1:])
    return (
        f"the text is longer than the model's context: only its first {len(kept):,} tokens "
        f"(about {min(shown, len(text)):,} of its {len(text):,} characters, up to {last!r}) "
        f"are explained; the remaining {max(len(text) - shown, 0):,} characters or so were left out"
    )


def _check_replaceable(out: Path) -> None:
    """The page replaces `out` whole: refuse anything there but an earlier page (a run folder
    given as --out would be deleted)."""
    from graft.atomic_files import check_output
    from graft.insight.explain_page import PAGE_FILE

    check_output(out, folder=True)
    if out.is_dir() and any(out.iterdir()) and not (out / PAGE_FILE).is_file():
        raise ConfigError(
            f"--out {out}: a folder holding files that are not an explain page, which writing "
            "the page would replace; choose a new or empty folder"
        )


def attention_rollout(attentions: np.ndarray) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) of one text's (L, H, T, T) weights: per layer,
    the heads' mean plus the identity (the residual connection), rows renormalised; then the
    product through the layers, the top one leftmost. Row i: the share each token has in
    position i at the top (each row sums to 1)."""
    rollout = np.eye(attentions.shape[-1], dtype=np.float64)
    for layer in attentions.astype(np.float64):
        mixed = layer.mean(axis=0) + np.eye(layer.shape[-1])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    return rollout


def _logit_lens(
    model: LanguageModel, tokenizer: Tokenizer, hidden_states: tuple[torch.Tensor, ...]
) -> LogitLens:
    tokens, probs = [], []
    for hidden in hidden_states:
        p = model.lm_logits_of(hidden[0]).float().softmax(dim=-1)  # (T, V)
        top = p.max(dim=-1)
        tokens.append([tokenizer.decode([int(i)]) for i in top.indices])
        probs.append(top.values.cpu().numpy())
    reads = (
        "the token at each position (a masked LM's head, on unmasked text)"
        if model.config.is_encoder
        else "the next token"
    )
    return LogitLens(tokens=tokens, probs=np.stack(probs), reads=reads)


def _surprisal(logits: torch.Tensor, ids: torch.Tensor) -> list[float | None]:
    """-ln p(token | the tokens before it) per token; None for the first, which nothing
    predicts."""
    logp = logits[:-1].float().log_softmax(dim=-1)
    taken = -logp.gather(-1, ids[1:, None])[:, 0]
    return [None, *(float(v) for v in taken)]


def integrated_gradients(
    model: LanguageModel, ids: torch.Tensor, target: int, *, steps: int = 48
) -> tuple[np.ndarray, float, float]:
    """Integrated gradients (Sundararajan et al. 2017) of a sequence classifier's logit for label
    `target` with respect to the token embeddings of `ids` (T,), from a baseline of zero token
    embeddings (positions and token types are added to both alike), by the trapezoid rule over
    `steps` intervals. Returns the per-token attributions (T,), summed over the embedding, and
    the logit at the text and at the baseline: by completeness the attributions sum to their
    difference, up to the rule's error."""
    with torch.no_grad():
        native = model.token_embeddings(ids[None])  # (1, T, C)
    dtype, embeds = native.dtype, native.float()  # the path is built in float32
    baseline = torch.zeros_like(embeds)
    alphas = torch.linspace(0.0, 1.0, steps + 1, device=embeds.device)
    weights = torch.full_like(alphas, 1.0 / steps)
    weights[0] = weights[-1] = 0.5 / steps  # the trapezoid's half-weighted ends
    grad_sum = torch.zeros_like(embeds)
    ends: dict[int, float] = {}
    with torch.enable_grad():
        for start in range(0, steps + 1, _IG_BATCH):
            alpha = alphas[start : start + _IG_BATCH, None, None]
            path = (baseline + alpha * (embeds - baseline)).to(dtype).requires_grad_(True)
            logits = model(inputs_embeds=path, heads=("classifier",)).class_logits
            assert logits is not None  # the classifier head was asked for
            chosen = logits[:, target]
            (grads,) = torch.autograd.grad(chosen.sum(), path)
            w = weights[start : start + _IG_BATCH, None, None]
            grad_sum += (grads.float() * w).sum(dim=0, keepdim=True)
            for offset, value in enumerate(chosen.detach().float().tolist()):
                if start + offset in (0, steps):
                    ends[start + offset] = value
    scores = ((embeds - baseline) * grad_sum).sum(dim=-1)[0]
    return scores.cpu().numpy(), ends[steps], ends[0]
