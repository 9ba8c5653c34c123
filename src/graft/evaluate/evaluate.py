"""`graft eval`: one checkpoint scored on one task's data, written as a report.

This module owns how a checkpoint meets evaluation data; the numbers themselves are defined in
`graft.evaluate.metrics`. One function per task:

- `evaluate_lm`: text files (.txt, .md, .jsonl), each document scored on its own after the
  end-of-text id, in lm-evaluation-harness's rolling windows (`_windows`), so its perplexities
  are lm-eval's `loglikelihood_rolling` ones for the same text, model and window. Only document
  tokens are scored; the end-of-text id is context, so the loss carries exactly the text whose
  bytes and words normalise it (as lm-eval counts bits per byte and word perplexity).
- `evaluate_classify`: labelled records through the checkpoint's sequence classifier, framed and
  batched by `Classify` exactly as fine-tuning validated them (the framing is
  `graft.data.inputs.model_inputs`, which the server uses too).
- `evaluate_tokens`: tagged sentences through the token classifier, one tag per word read from
  its first sub-token (`graft.data.tagged.tagged_inputs`, training's own path, and
  `graft.evaluate.predict.word_tags`, which `graft extract` reads raw text through too); words
  cut off by the context are predicted "O".
- `evaluate_generate`: greedy decoding from prompts (a conversation rendered with the chat
  template, or a plain `source` text) compared with a reference.

`evaluate_checkpoint` picks the task; each writes `<task>.json`, `<task>.md` and
`<task>_samples.jsonl` (plus `classify_confusion.png`) into the output folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from graft.data.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from graft.data.documents import iter_documents
from graft.data.records import (
    IGNORE_INDEX,
    Conversation,
    _check_decoded,
    _decode,
    _json_fields,
    _jsonl_fields,
    read_conversations,
    read_labelled,
)
from graft.data.tagged import read_tagged, refuse_unknown_tags, tagged_inputs
from graft.data.tokenizer import EOT, Tokenizer
from graft.errors import CheckpointError, ConfigError, DataError, TokenizerError
from graft.evaluate.metrics import (
    DEFINITIONS,
    classification_metrics,
    entity_metrics,
    generation_metrics,
    language_model_metrics,
    plot_confusion_matrix,
    write_report,
)
from graft.evaluate.predict import class_probabilities, word_tags
from graft.infer.generate import SamplingParams, generate
from graft.model.transformer import LanguageModel
from graft.objectives.classify import check_labels
from graft.run_files import EVAL_DIR, run_dir_of

__all__ = [
    "EVAL_TASKS",
    "EvalOptions",
    "EvalTask",
    "default_out_dir",
    "evaluate_checkpoint",
    "evaluate_classify",
    "evaluate_generate",
    "evaluate_lm",
    "evaluate_tokens",
]

EvalTask = Literal["lm", "classify", "tokens", "generate"]
EVAL_TASKS: tuple[str, ...] = get_args(EvalTask)
Echo = Callable[[str], None]

# Keys some reports carry that metrics.DEFINITIONS does not define; written into the report.
_MORE_DEFINITIONS: dict[str, str] = {
    "tokens": "document tokens scored (end-of-text separators are context, not scored)",
    "bytes": "UTF-8 bytes of the scored documents' text",
    "words": "whitespace-separated words of the scored documents' text",
    "word_accuracy": "fraction of words whose predicted tag equals the true tag",
    "ended_with_eos": (
        "fraction of generations that ended with the end-of-turn token before the length limit"
    ),
}


@dataclass(frozen=True)
class EvalOptions:
    """What `graft eval` was asked: every default lives here, the CLI passes only what was given."""

    checkpoint: Path
    task: EvalTask
    data: tuple[Path, ...]
    out_dir: Path | None = None  # None: <run dir>/eval for a checkpoint inside a run, else ./eval
    text_field: str = "text"
    label_field: str = "label"
    encoding: str = "utf-8"
    limit: int | None = None  # the first N records (documents for lm) of the data, in order
    max_new_tokens: int = 128
    seq_len: int | None = None  # None: the model's max_seq_len
    batch_size: int = 8
    device: str = "cpu"
    samples: int = 20  # sample predictions kept (classify and tokens add up to as many errors)


@dataclass(frozen=True)
class GenerationExample:
    """One prompt and the text it should produce; `source` is `file:line`."""

    prompt: str
    reference: str
    source: str


# -- the dispatcher --------------------------------------------------------------------------


def evaluate_checkpoint(options: EvalOptions, echo: Echo = lambda _: None) -> Path:
    """Evaluate options.checkpoint on options.task; returns the path of the report's JSON."""
    from graft.checkpoint import load_model
    from graft.device import resolve_device

    _check_options(options)
    device = resolve_device(options.device, what="--device")
    model, tokenizer = load_model(options.checkpoint, device=device)
    out_dir = options.out_dir or default_out_dir(options.checkpoint)
    task = {
        "lm": evaluate_lm,
        "classify": evaluate_classify,
        "tokens": evaluate_tokens,
        "generate": evaluate_generate,
    }[options.task]
    return task(model, tokenizer, options, out_dir, echo)


def default_out_dir(checkpoint: Path) -> Path:
    """<run dir>/eval for a run directory or a checkpoint inside one (run/checkpoints/NAME); else
    ./eval."""
    run = run_dir_of(checkpoint)
    return Path(EVAL_DIR) if run is None else run / EVAL_DIR


def _check_options(options: EvalOptions) -> None:
    if options.task not in EVAL_TASKS:
        raise ConfigError(f"--task {options.task!r}: choose one of {', '.join(EVAL_TASKS)}")
    if not options.data:
        raise ConfigError("--data: give at least one file to evaluate on")
    for name, value in (
        ("--limit", options.limit),
        ("--max-new-tokens", options.max_new_tokens),
        ("--seq-len", options.seq_len),
        ("--batch-size", options.batch_size),
        ("samples", options.samples),
    ):
        if value is not None and value < (0 if name == "samples" else 1):
            raise ConfigError(f"{name} must be a positive integer, got {value}")
    # Checked before loading the model, which may take a while for a large one.
    for path in options.data:
        if not Path(path).exists():
            raise DataError(f"{path}: no such file or folder; check --data")


def _report(
    out_dir: Path,
    options: EvalOptions,
    metrics: dict[str, Any],
    samples: Sequence[dict[str, Any]] = (),
    **run: Any,
) -> Path:
    """Write the task's report: `metrics`, the definition of every key that has one, and what was
    run (`run` adds to it). Returns the path of its JSON."""
    known = {**DEFINITIONS, **_MORE_DEFINITIONS}
    metrics["definitions"] = {key: known[key] for key in metrics if key in known}
    metrics["run"] = {
        "checkpoint": str(options.checkpoint),
        "task": options.task,
        "data": [str(p) for p in options.data],
        "limit": options.limit,
        **run,
    }
    return write_report(out_dir, options.task, metrics, samples)[0]


def _context(model: LanguageModel, options: EvalOptions) -> int:
    context = model.config.max_seq_len
    if options.seq_len is None:
        return context
    if options.seq_len > context:
        raise ConfigError(
            f"--seq-len {options.seq_len} exceeds {options.checkpoint}'s context of {context} "
            f"tokens; pass at most {context}"
        )
    return options.seq_len


def _pick_samples(
    rows: list[dict[str, Any]], wrong: Sequence[bool], n: int
) -> list[dict[str, Any]]:
    """The first n rows, then up to n wrong ones among the rest: a few typical cases and the
    mistakes."""
    errors = [row for row, bad in zip(rows[n:], wrong[n:]) if bad][:n]
    return rows[:n] + errors


def _check_head(model: LanguageModel, options: EvalOptions, head: str, how: str) -> None:
    if model.config.head != head:
        raise CheckpointError(
            f"{options.checkpoint}: has head {model.config.head!r}; --task {options.task} needs a "
            f"{head!r} head ({how})"
        )


def _check_decoder(model: LanguageModel, options: EvalOptions) -> None:
    if model.config.is_encoder:
        raise CheckpointError(
            f"{options.checkpoint}: is an encoder (bidirectional attention); --task {options.task} "
            "needs a causal language model"
        )


# -- language modelling ----------------------------------------------------------------------


def _documents(
    tokenizer: Tokenizer, options: EvalOptions
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Each document's ids, and the counts of documents, bytes and words."""
    documents: list[np.ndarray] = []
    counts = {"bytes": 0, "words": 0, "documents": 0}
    for document in iter_documents(list(options.data)):
        if options.limit is not None and counts["documents"] >= options.limit:
            break
        pieces = list(document.pieces())
        ids = np.fromiter(chain.from_iterable(tokenizer.encode_batch(pieces)), dtype=np.int64)
        if ids.size == 0:
            continue  # whitespace the tokenizer drops: nothing to score, and no bytes counted
        documents.append(ids)
        counts["documents"] += 1
        counts["bytes"] += sum(len(piece.encode("utf-8")) for piece in pieces)
        counts["words"] += sum(len(piece.split()) for piece in pieces)
    if not documents:
        raise DataError(f"{', '.join(map(str, options.data))}: no document encodes to any token")
    return documents, counts


def _windows(documents: list[np.ndarray], eot: int, seq_len: int) -> tuple[torch.Tensor, ...]:
    """(inputs, targets), each (windows, seq_len): lm-evaluation-harness's rolling windows
    (`get_rolling_token_windows` with one token of context). A document is read on its own after
    the end-of-text id; each window predicts its next seq_len tokens from the token before them,
    and the last, shorter remainder is read after as many of the tokens before it as fill the
    window (context, not scored again). So every token is predicted exactly once, never from
    another document. A window shorter than seq_len (a short document) is right-padded with
    unscored end-of-text ids, which causal attention keeps from touching the real ones."""
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for ids in documents:
        read = np.concatenate([np.array([eot], dtype=np.int64), ids])  # read[j + 1] is ids[j]
        for start in range(0, ids.size, seq_len):
            end = min(start + seq_len, ids.size)  # this window predicts ids[start:end]
            first = max(0, end - seq_len)  # and reads read[first:end]
            x = np.full(seq_len, eot, dtype=np.int64)
            y = np.full(seq_len, IGNORE_INDEX, dtype=np.int64)
            x[: end - first] = read[first:end]
            y[start - first : end - first] = ids[start:end]
            inputs.append(x)
            targets.append(y)
    return tuple(torch.from_numpy(np.stack(rows)) for rows in (inputs, targets))


@torch.inference_mode()
def evaluate_lm(
    model: LanguageModel,
    tokenizer: Tokenizer,
    options: EvalOptions,
    out_dir: Path,
    echo: Echo = lambda _: None,
) -> Path:
    """Loss and perplexity per token, bits per byte and word perplexity of the text in
    options.data."""
    _check_decoder(model, options)
    seq_len = _context(model, options)
    eot = tokenizer.eot_id
    if eot is None:
        raise TokenizerError(
            f"{options.checkpoint}: the tokenizer has no end-of-text (eos) token to start "
            "documents from; --task lm needs one"
        )
    documents, counts = _documents(tokenizer, options)
    tokens = sum(ids.size for ids in documents)
    echo(f"scoring {tokens:,} tokens of {counts['documents']:,} documents in windows of {seq_len}")
    device = next(model.parameters()).device
    inputs, targets = _windows(documents, eot, seq_len)
    total = 0.0
    for start in range(0, len(inputs), options.batch_size):
        x, y = (t[start : start + options.batch_size].to(device) for t in (inputs, targets))
        loss = model(x, causal=True, targets=y).lm_loss
        assert loss is not None
        total += float(loss)
    figures = language_model_metrics(total, tokens, counts["bytes"], counts["words"])
    metrics: dict[str, Any] = {
        **figures,
        "tokens": tokens,
        **counts,  # bytes, words, documents
        "windows": len(inputs),
        "seq_len": seq_len,
    }
    json_path = _report(out_dir, options, metrics)
    echo(
        f"loss {figures['loss']:.4f}, ppl {figures['ppl']:.2f} per token; "
        f"{figures['bits_per_byte']:.4f} bits per byte; word ppl {figures['word_ppl']:.2f}"
    )
    return json_path


# -- classification --------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_classify(
    model: LanguageModel,
    tokenizer: Tokenizer,
    options: EvalOptions,
    out_dir: Path,
    echo: Echo = lambda _: None,
) -> Path:
    """Accuracy, macro and per-class precision, recall and F1, and a confusion-matrix PNG."""
    _check_head(model, options, "sequence", "fine-tune one with graft finetune classify")
    records = []
    for path in options.data:
        records += read_labelled(
            path,
            text_field=options.text_field,
            label_field=options.label_field,
            encoding=options.encoding,
        )[0]
    records = records[: options.limit]
    labels = model.config.labels
    max_len = _context(model, options)
    check_labels(records, labels)  # names the record's file:line
    echo(f"classifying {len(records):,} texts into {len(labels)} labels")
    classified = class_probabilities(
        model,
        tokenizer,
        [r.text for r in records],
        max_len=max_len,
        batch_size=options.batch_size,
        sources=[r.source for r in records],
    )
    top = classified.probabilities.max(dim=-1)
    predicted: list[int] = top.indices.tolist()
    confidence: list[float] = top.values.tolist()
    y_true = [r.label for r in records]
    y_pred = [labels[i] for i in predicted]
    scores = classification_metrics(y_true, y_pred, labels=labels)
    metrics: dict[str, Any] = {
        **asdict(scores),
        "count": len(records),
        "truncated": classified.truncated,
    }
    rows = [
        {
            "source": r.source,
            "text": r.text,
            "label": r.label,
            "predicted": p,
            "probability": round(c, 6),
        }
        for r, p, c in zip(records, y_pred, confidence)
    ]
    samples = _pick_samples(rows, [t != p for t, p in zip(y_true, y_pred)], options.samples)
    json_path = _report(out_dir, options, metrics, samples, seq_len=max_len)
    plot_confusion_matrix(scores, out_dir / "classify_confusion.png")
    echo(
        f"accuracy {scores.accuracy:.4f}, macro F1 {scores.macro_f1:.4f} "
        f"over {len(records):,} texts"
    )
    return json_path


# -- token tagging ---------------------------------------------------------------------------


@torch.inference_mode()
def evaluate_tokens(
    model: LanguageModel,
    tokenizer: Tokenizer,
    options: EvalOptions,
    out_dir: Path,
    echo: Echo = lambda _: None,
) -> Path:
    """Entity-level precision, recall and F1 (seqeval), overall and per entity type."""
    _check_head(model, options, "token", "fine-tune one with graft finetune tokens")
    sentences = []
    for path in options.data:
        sentences += read_tagged(path, encoding=options.encoding)[0]
    sentences = sentences[: options.limit]
    tags = model.config.labels
    max_len = _context(model, options)
    refuse_unknown_tags(sentences, tags)
    # The training path from words to inputs (graft extract reads raw text through it too).
    inputs = [
        tagged_inputs(
            tokenizer, s.words, framed=model.config.is_encoder, max_len=max_len, source=s.source
        )
        for s in sentences
    ]
    echo(f"tagging {len(sentences):,} sentences with {len(tags)} tags")
    true_tags = [list(s.tags) for s in sentences]
    # Words past the context get no prediction: they count as "O", so the truncation costs recall.
    pred_tags = [p.tags for p in word_tags(model, inputs, batch_size=options.batch_size)]
    scores = entity_metrics(true_tags, pred_tags)
    words = sum(len(t) for t in true_tags)
    correct = sum(a == b for t, p in zip(true_tags, pred_tags) for a, b in zip(t, p))
    metrics: dict[str, Any] = {
        **scores,
        "word_accuracy": correct / words,
        "count": len(sentences),
        "truncated": sum(x.truncated for x in inputs),
    }
    rows = [
        {"source": s.source, "words": list(s.words), "tags": t, "predicted": p}
        for s, t, p in zip(sentences, true_tags, pred_tags)
    ]
    samples = _pick_samples(rows, [t != p for t, p in zip(true_tags, pred_tags)], options.samples)
    json_path = _report(out_dir, options, metrics, samples, seq_len=max_len)
    echo(
        f"entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, recall "
        f"{scores['recall']:.4f}) over {len(sentences):,} sentences"
    )
    return json_path


# -- generation ------------------------------------------------------------------------------


def _first_fields(path: Path, encoding: str) -> dict[str, object] | None:
    """The first record of a .jsonl or .json file, to tell source/target pairs from
    conversations."""
    text = _decode(path, encoding)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):
        return None  # read_conversations names the formats it reads
    try:
        fields = _jsonl_fields(path, text) if suffix == ".jsonl" else _json_fields(path, text)
        _, first = next(fields)
    except (StopIteration, DataError):
        return None  # read_conversations reports the file's problem
    return first if isinstance(first, dict) else None


def _is_pair_file(path: Path, encoding: str) -> bool:
    keys = set(_first_fields(path, encoding) or ())
    return {"source", "target"} <= keys and not {"messages", "instruction"} & keys


def read_pairs(path: Path, encoding: str = "utf-8") -> list[GenerationExample]:
    """Source/target pairs (translation, summarisation) from .jsonl or a .json array; the prompt is
    the source text as is. A record without a string `source` and `target` names its file:line."""
    path = Path(path)
    text = _decode(path, encoding)
    _check_decoded(path, text, encoding)
    fields = (
        _jsonl_fields(path, text) if path.suffix.lower() == ".jsonl" else _json_fields(path, text)
    )
    examples: list[GenerationExample] = []
    for where, item in fields:
        if isinstance(item, Exception):
            raise DataError(str(item))
        for name in ("source", "target"):
            if name not in item:
                raise DataError(
                    f'{where}: missing field {name!r}; expected {{"source": ..., "target": ...}}'
                )
            if not isinstance(item[name], str):
                raise DataError(
                    f"{where}: field {name!r} must be a string, got {type(item[name]).__name__}"
                )
        source, target = item["source"], item["target"]
        assert isinstance(source, str) and isinstance(target, str)
        if not source.strip():
            raise DataError(f"{where}: empty field 'source'")
        examples.append(GenerationExample(prompt=source, reference=target, source=where))
    if not examples:
        raise DataError(f"{path}: no source/target records")
    return examples


def _conversation_example(conversation: Conversation, template: str, eos: str) -> GenerationExample:
    """The prompt is every turn before the last assistant reply, with the generation prompt."""
    try:
        prompt = render_chat(
            template, conversation.messages[:-1], add_generation_prompt=True, eos_token=eos
        )
    except DataError as exc:
        raise DataError(f"{conversation.source}: {exc}") from None
    return GenerationExample(
        prompt=prompt, reference=conversation.messages[-1].content, source=conversation.source
    )


def generation_examples(
    paths: Sequence[Path], tokenizer: Tokenizer, encoding: str = "utf-8"
) -> list[GenerationExample]:
    """Prompts and references of every file: source/target pairs, or Alpaca or chat records."""
    template = tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE
    eos = tokenizer.special_tokens_map.get("eos_token", EOT)
    examples: list[GenerationExample] = []
    for path in paths:
        path = Path(path)
        if _is_pair_file(path, encoding):
            examples += read_pairs(path, encoding)
        else:
            conversations, _ = read_conversations(path, encoding=encoding)
            examples += [_conversation_example(c, template, eos) for c in conversations]
    return examples


@torch.inference_mode()
def evaluate_generate(
    model: LanguageModel,
    tokenizer: Tokenizer,
    options: EvalOptions,
    out_dir: Path,
    echo: Echo = lambda _: None,
) -> Path:
    """Greedy generations against references: BLEU, chrF, ROUGE-1/2/L, exact match, and how often
    the model stopped by itself.

    Decoding stops at the end-of-turn (eos) token or after max_new_tokens. A prompt too long to
    leave room for them is cut from the left (the generation prompt at its end is kept) to
    max(context - max_new_tokens, context // 2) tokens, and counted.
    """
    _check_decoder(model, options)
    stop = tokenizer.eot_id
    if stop is None:
        raise TokenizerError(
            f"{options.checkpoint}: the tokenizer has no eos token; --task generate needs one to "
            "know where a generation ends"
        )
    examples = generation_examples(options.data, tokenizer, options.encoding)[: options.limit]
    context = model.config.max_seq_len
    keep = max(context - options.max_new_tokens, context // 2, 1)
    params = SamplingParams(
        max_new_tokens=options.max_new_tokens, temperature=0.0, stop_ids=frozenset({stop})
    )
    echo(
        f"generating for {len(examples):,} prompts "
        f"(greedy, up to {options.max_new_tokens} new tokens)"
    )
    predictions: list[str] = []
    ended: list[bool] = []
    truncated = 0
    for number, example in enumerate(examples, start=1):
        ids = tokenizer.encode(example.prompt)
        if not ids:
            raise DataError(f"{example.source}: the prompt encodes to no tokens")
        if len(ids) > keep:
            ids, truncated = ids[-keep:], truncated + 1
        out = list(generate(model, ids, params))
        stopped = bool(out) and out[-1] == stop
        predictions.append(tokenizer.decode(out[:-1] if stopped else out).strip())
        ended.append(stopped)
        if number % 50 == 0:
            echo(f"{number:,} of {len(examples):,} generated")
    references = [e.reference for e in examples]
    scores = generation_metrics(predictions, references)
    metrics: dict[str, Any] = {
        **scores,
        "ended_with_eos": sum(ended) / len(ended),
        "prompts_truncated": truncated,
        "max_new_tokens": options.max_new_tokens,
    }
    rows = [
        {
            "source": e.source,
            "prompt": e.prompt,
            "reference": e.reference,
            "prediction": p,
            "ended_with_eos": s,
        }
        for e, p, s in zip(examples, predictions, ended)
    ]
    json_path = _report(out_dir, options, metrics, rows[: options.samples], decoding="greedy")
    echo(
        f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}, ROUGE-L {scores['rougeL']:.4f}, "
        f"exact match {scores['exact_match']:.4f}; {metrics['ended_with_eos']:.0%} ended with eos"
    )
    return json_path
