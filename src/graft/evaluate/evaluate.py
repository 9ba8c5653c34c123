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
- `evaluate_generate`: greedy decoding from prompts compared with a reference: a conversation, or
  a source/target pair framed as one (`graft.data.pairs.pair_conversation`, as `graft finetune
  seq2seq` trained it), in the very ids fine-tuning gave it (`graft.data.chat.encode_prompt`); a
  pair's plain source text for a base LM whose tokenizer has no chat template. Pairs come from
  JSONL records or from parallel files PREFIX.SRC and PREFIX.TGT (`source_lang`, `target_lang`).
  With `beams` > 1 it decodes by beam search (`graft.infer.beam`) instead of greedily.
- `evaluate_qa`: SQuAD questions answered by the checkpoint's span head through
  `graft.evaluate.qa.answer_spans` (the windows fine-tuning trained on, the server's path),
  scored with SQuAD's exact match and F1.

`evaluate_checkpoint` picks the task; each writes `<task>.json`, `<task>.md` and
`<task>_samples.jsonl` (plus `classify_confusion.png`) into the output folder, as one report:
`<task>.json` is written last and only ever found beside the files written with it
(`graft.evaluate.metrics.write_report`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import chain
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from graft.data.documents import iter_documents
from graft.data.pairs import (
    parallel_paths,
)
from graft.data.qa import qa_windows, read_qa
from graft.data.records import IGNORE_INDEX, read_labelled
from graft.data.tagged import read_tagged, refuse_unknown_tags, tagged_inputs
from graft.data.tokenizer import Tokenizer
from graft.errors import CheckpointError, ConfigError, DataError, TokenizerError
from graft.evaluate.metrics import (
    DEFINITIONS,
    SQUAD_DEFINITIONS,
    classification_metrics,
    confusion_matrix_png,
    entity_metrics,
    generation_metrics,
    language_model_metrics,
    sentence_scores,
    squad_exact_match,
    squad_f1,
    squad_metrics,
    write_report,
)
from graft.evaluate.predict import class_probabilities, scoring_context, word_tags
from graft.evaluate.prompts import generation_examples
from graft.evaluate.qa import answer_spans, qa_settings
from graft.infer.beam import BeamParams, beam_search
from graft.infer.generate import SamplingParams, generate
from graft.model.transformer import LanguageModel
from graft.objectives.classify import check_labels
from graft.objectives.qa import QAConfig
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
    "evaluate_qa",
    "evaluate_tokens",
]

EvalTask = Literal["lm", "classify", "tokens", "generate", "qa"]
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
    "skipped": "invalid records skipped (--skip-invalid)",
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
    beams: int = 1  # generate: beam search with this many beams; 1 is greedy decoding
    length_penalty: float = 1.0  # generate, beams > 1: hypotheses score sum / length ** this
    seq_len: int | None = None  # None: the model's max_seq_len
    batch_size: int = 8
    device: str = "cpu"
    samples: int = 20  # sample predictions kept (classify and tokens add up to as many errors)
    # generate: each --data is the PREFIX of the parallel files PREFIX.SRC and PREFIX.TGT
    source_lang: str | None = None
    target_lang: str | None = None
    skip_invalid: bool = False  # generate, qa: skip and count bad records instead of stopping
    # qa: None takes the checkpoint's run config's objective.stride / max_answer_tokens (QAConfig's
    # defaults when it has none)
    stride: int | None = None
    max_answer_tokens: int | None = None


# -- the dispatcher --------------------------------------------------------------------------


def evaluate_checkpoint(options: EvalOptions, echo: Echo = lambda _: None) -> Path:
    """Evaluate options.checkpoint on options.task; returns the path of the report's JSON."""
    from graft.atomic_files import check_output
    from graft.checkpoint import load_model, refuse_writing_into
    from graft.device import resolve_device

    _check_options(options)
    out_dir = options.out_dir or default_out_dir(options.checkpoint)
    check_output(out_dir, folder=True)  # before the evaluation, not after it
    refuse_writing_into(out_dir, "--out")
    device = resolve_device(options.device, what="--device")
    model, tokenizer = load_model(options.checkpoint, device=device)
    task = {
        "lm": evaluate_lm,
        "classify": evaluate_classify,
        "tokens": evaluate_tokens,
        "generate": evaluate_generate,
        "qa": evaluate_qa,
    }[options.task]
    return task(model, tokenizer, options, out_dir, echo)


def _scored_checkpoint(given: Path) -> Path:
    """The checkpoint a report scored: a run folder stands for its checkpoints/last, which the
    report names (a fine-tuning run's early-stopped best is checkpoints/best)."""
    from graft.checkpoint import resolve_checkpoint
    from graft.errors import CheckpointError

    try:
        return resolve_checkpoint(given)
    except CheckpointError:  # a Hugging Face directory: scored as given
        return Path(given)


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
        ("--beams", options.beams),
        ("samples", options.samples),
    ):
        if value is not None and value < (0 if name == "samples" else 1):
            raise ConfigError(f"{name} must be a positive integer, got {value}")
    _check_task_options(options)
    _check_beams(options)
    langs = _langs(options)
    # Checked before loading the model, which may take a while for a large one.
    for path in options.data:
        if langs is not None:
            parallel_paths(Path(path), *langs)
        elif not Path(path).exists():
            raise DataError(f"{path}: no such file or folder; check --data")


# The options that only some tasks read: given to another task they would do nothing, silently.
_TASK_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text_field": ("--text-field", ("classify",)),
    "label_field": ("--label-field", ("classify",)),
    "max_new_tokens": ("--max-new-tokens", ("generate",)),
    "source_lang": ("--source-lang", ("generate",)),
    "target_lang": ("--target-lang", ("generate",)),
    "skip_invalid": ("--skip-invalid", ("generate", "qa")),
    "stride": ("--stride", ("qa",)),
    "max_answer_tokens": ("--max-answer-tokens", ("qa",)),
}


def _check_task_options(options: EvalOptions) -> None:
    defaults = {f.name: f.default for f in fields(EvalOptions)}
    for name, (flag, tasks) in _TASK_OPTIONS.items():
        if getattr(options, name) != defaults[name] and options.task not in tasks:
            raise ConfigError(
                f"{flag} applies to --task {' or '.join(tasks)}, not --task {options.task}"
            )


def _check_beams(options: EvalOptions) -> None:
    """--beams decodes --task generate only; --length-penalty scores beam search only."""
    if options.beams != 1 and options.task != "generate":
        raise ConfigError(
            f"--beams: beam search decodes --task generate, not --task {options.task}"
        )
    if not math.isfinite(options.length_penalty):
        raise ConfigError(f"--length-penalty must be a finite number, got {options.length_penalty}")
    if options.length_penalty != 1.0 and options.beams == 1:
        raise ConfigError(
            "--length-penalty scores beam search hypotheses: give --beams N (N > 1) too"
        )


def _langs(options: EvalOptions) -> tuple[str, str] | None:
    """(source, target) language suffixes of parallel files, or None; refused unless both are
    given, and for a task other than generate."""
    if options.source_lang is None and options.target_lang is None:
        return None
    if options.source_lang is None or options.target_lang is None:
        raise ConfigError(
            "--source-lang and --target-lang: give both (--data names the PREFIX of the parallel "
            "files PREFIX.SRC and PREFIX.TGT) or neither"
        )
    if options.task != "generate":
        raise ConfigError(
            f"--source-lang/--target-lang: parallel files are read by --task generate, not "
            f"--task {options.task}"
        )
    return options.source_lang, options.target_lang


def _report(
    out_dir: Path,
    options: EvalOptions,
    metrics: dict[str, Any],
    samples: Sequence[dict[str, Any]] = (),
    files: dict[str, bytes] | None = None,
    /,
    **run: Any,
) -> Path:
    """Write the task's report: `metrics`, the definition of every key that has one, and what was
    run (`run` adds to it); `metrics["definitions"]`, when given, are the task's own meanings of
    keys (a QA report's SQuAD `exact_match`); `files`, more files of the report (a figure), written
    with it as one (see write_report). Returns the path of its JSON."""
    known = {**DEFINITIONS, **_MORE_DEFINITIONS, **metrics.pop("definitions", {})}
    metrics["definitions"] = {key: known[key] for key in metrics if key in known}
    metrics["run"] = {
        "checkpoint": str(_scored_checkpoint(options.checkpoint)),
        "task": options.task,
        "data": [str(p) for p in options.data],
        "limit": options.limit,
        **run,
    }
    return write_report(out_dir, options.task, metrics, samples, files)[0]


def _context(model: LanguageModel, options: EvalOptions, *, texts: bool = True) -> int:
    """--seq-len, else (for whole texts: classify, tokens, qa) the context the checkpoint's run
    trained on (its train.seq_len: fine-tuning cut every text there), else the model's. The lm
    task's rolling windows take the model's context, as lm-evaluation-harness does on the
    export."""
    from graft.checkpoint import trained_context

    seq_len = options.seq_len or (trained_context(options.checkpoint) if texts else None)
    return scoring_context(model, seq_len, str(options.checkpoint))


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


def _windows(
    documents: list[np.ndarray], prefix: int, eot: int, seq_len: int
) -> tuple[torch.Tensor, ...]:
    """(inputs, targets), each (windows, seq_len): lm-evaluation-harness's rolling windows
    (`get_rolling_token_windows` with one token of context). A document is read on its own after
    `prefix` (lm-eval's prefix token: bos, or end-of-text without one); each window predicts
    its next seq_len tokens from the token before them, and the last, shorter remainder is read
    after as many of the tokens before it as fill the window (context, not scored again). So
    every token is predicted exactly once, never from another document. A window shorter than
    seq_len (a short document) is right-padded with unscored end-of-text ids, which causal
    attention keeps from touching the real ones."""
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for ids in documents:
        read = np.concatenate([np.array([prefix], dtype=np.int64), ids])  # read[j + 1] is ids[j]
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
    seq_len = _context(model, options, texts=False)
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
    # lm-evaluation-harness's prefix token: bos where the tokenizer has one, else eos.
    prefix = tokenizer.bos_id if tokenizer.bos_id is not None else eot
    inputs, targets = _windows(documents, prefix, eot, seq_len)
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
    figure = {"classify_confusion.png": confusion_matrix_png(scores)}
    json_path = _report(out_dir, options, metrics, samples, figure, seq_len=max_len)
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


@torch.inference_mode()
def evaluate_generate(
    model: LanguageModel,
    tokenizer: Tokenizer,
    options: EvalOptions,
    out_dir: Path,
    echo: Echo = lambda _: None,
) -> Path:
    """Greedy generations (beam search with options.beams > 1) against references: BLEU, chrF,
    ROUGE-1/2/L, exact match, and how often the model stopped by itself.

    Decoding stops at the end-of-turn (eos) token, after max_new_tokens or when the context is
    full. A prompt is read whole, as fine-tuning and the server read it, whenever it leaves room
    for one new token; one that fills the context is cut from the left (the generation prompt at
    its end is kept) to max(context - max_new_tokens, context // 2) tokens, and counted.
    """
    _check_decoder(model, options)
    if tokenizer.eot_id is None:
        raise TokenizerError(
            f"{options.checkpoint}: the tokenizer has no eos token; --task generate needs one to "
            "know where a generation ends"
        )
    from graft.checkpoint import model_source
    from graft.model.convert.hf import stop_ids

    # Its eos, and an HF directory's generation_config eos ids, as `graft generate` stops.
    stops = stop_ids(tokenizer, model_source(options.checkpoint))
    langs = _langs(options)
    examples, skipped = generation_examples(
        options.data,
        tokenizer,
        encoding=options.encoding,
        langs=langs,
        skip_invalid=options.skip_invalid,
        limit=options.limit,
    )
    context = model.config.max_seq_len
    keep = max(context - options.max_new_tokens, context // 2, 1)
    greedy = SamplingParams(max_new_tokens=options.max_new_tokens, temperature=0.0, stop_ids=stops)
    beam = None
    decoding = "greedy"
    if options.beams > 1:
        beam = BeamParams(
            beams=options.beams,
            max_new_tokens=options.max_new_tokens,
            length_penalty=options.length_penalty,
            stop_ids=stops,
        )
        decoding = f"beam {options.beams}, length penalty {options.length_penalty}"
    echo(
        f"generating for {len(examples):,} prompts "
        f"({decoding}, up to {options.max_new_tokens} new tokens)"
    )
    predictions: list[str] = []
    ended: list[bool] = []
    truncated = 0
    for number, example in enumerate(examples, start=1):
        ids = list(example.ids)
        if not ids:
            raise DataError(f"{example.source}: the prompt encodes to no tokens")
        if len(ids) >= context:
            ids, truncated = ids[-keep:], truncated + 1
        if beam is None:
            out = list(generate(model, ids, greedy))
        else:
            out = beam_search(model, ids, beam).ids
        stopped = bool(out) and out[-1] in stops
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
        "skipped": skipped,
    }
    rows = [
        {
            "source": e.source,
            "prompt": e.prompt,
            "reference": e.reference,
            "prediction": p,
            "ended_with_eos": s,
            **sentence_scores(p, e.reference),
        }
        for e, p, s in list(zip(examples, predictions, ended))[: options.samples]
    ]
    parallel = {} if langs is None else {"source_lang": langs[0], "target_lang": langs[1]}
    json_path = _report(out_dir, options, metrics, rows, decoding=decoding, **parallel)
    echo(
        f"BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}, ROUGE-L {scores['rougeL']:.4f}, "
        f"exact match {scores['exact_match']:.4f}; {metrics['ended_with_eos']:.0%} ended with eos"
    )
    return json_path


# -- extractive question answering -----------------------------------------------------------


def _qa_settings(options: EvalOptions) -> QAConfig:
    """The windows' stride and the longest answer: --stride and --max-answer-tokens when given,
    else what the checkpoint was fine-tuned with (its run config's objective), else QAConfig's
    defaults."""
    saved = qa_settings(options.checkpoint)
    for flag, value, least in (
        ("--stride", options.stride, 0),
        ("--max-answer-tokens", options.max_answer_tokens, 1),
    ):
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be an integer >= {least}, got {value}")
    given = {"stride": options.stride, "max_answer_tokens": options.max_answer_tokens}
    return saved.model_copy(update={k: v for k, v in given.items() if v is not None})


@torch.inference_mode()
def evaluate_qa(
    model: LanguageModel,
    tokenizer: Tokenizer,
    options: EvalOptions,
    out_dir: Path,
    echo: Echo = lambda _: None,
) -> Path:
    """SQuAD exact match and F1 of the answers the span head picks (`answer_spans`), each the best
    over a question's gold answers; a question without gold answers (SQuAD v2) is right with an
    empty answer. With skip_invalid, a question that leaves no room for its context in the
    window is skipped and counted."""
    _check_head(model, options, "span", "fine-tune one with graft finetune qa")
    records = []
    skipped = 0
    for path in options.data:
        found, bad = read_qa(path, skip_invalid=options.skip_invalid, encoding=options.encoding)
        records += found
        skipped += bad
    records = records[: options.limit]
    max_len = _context(model, options)
    settings = _qa_settings(options)
    if options.skip_invalid:
        fitting = []
        for record in records:
            try:
                qa_windows(
                    tokenizer,
                    record.question,
                    record.context,
                    max_len=max_len,
                    stride=settings.stride,
                )
            except DataError:
                skipped += 1
            else:
                fitting.append(record)
        records = fitting
    if not records:
        raise DataError(f"{', '.join(map(str, options.data))}: no question to answer")
    # qa_windows shares at most half a window's context between two windows.
    capped = ", at most half of each window's context" if 2 * settings.stride > max_len else ""
    echo(
        f"answering {len(records):,} questions in windows of {max_len} tokens "
        f"(stride {settings.stride}{capped}, answers of at most {settings.max_answer_tokens} "
        "tokens)"
    )
    predictions = answer_spans(
        model,
        tokenizer,
        records,
        max_len=max_len,
        stride=settings.stride,
        max_answer_tokens=settings.max_answer_tokens,
        batch_size=options.batch_size,
    )
    golds = [[answer.text for answer in r.answers] for r in records]
    texts = [p.text for p in predictions]
    scores = squad_metrics(texts, golds)
    metrics: dict[str, Any] = {
        **scores,
        "windows": sum(p.windows for p in predictions),
        "skipped": skipped,
        "definitions": {
            **SQUAD_DEFINITIONS,
            "windows": "windows the questions were read in (long contexts take several)",
        },
    }
    exact = [squad_exact_match(t, g) for t, g in zip(texts, golds)]
    rows = [
        {
            "source": r.source,
            "id": r.id,
            "question": r.question,
            "answers": g,
            "predicted": p.text,
            "start_char": p.start_char,
            "score": None if p.score is None else round(p.score, 4),
            "exact_match": bool(e),
            "f1": round(squad_f1(p.text, g), 4),
        }
        for r, g, p, e in zip(records, golds, predictions, exact)
    ]
    samples = _pick_samples(rows, [not e for e in exact], options.samples)
    json_path = _report(
        out_dir,
        options,
        metrics,
        samples,
        seq_len=max_len,
        stride=settings.stride,
        max_answer_tokens=settings.max_answer_tokens,
    )
    echo(
        f"exact match {scores['exact_match']:.2f}, F1 {scores['f1']:.2f} over "
        f"{len(records):,} questions ({metrics['windows']:,} windows)"
    )
    return json_path
