"""Evaluation metrics and their reports: the numbers `graft eval` and fine-tuning reports print.

This module owns how each number is defined and written down:

- language modelling: loss and perplexity per token of the model's own tokenizer, beside bits per
  byte and per-word perplexity, which compare across tokenizers and tools (`DEFINITIONS` states
  each one so a report can print it next to the number);
- classification: accuracy, macro and per-class precision, recall and F1, and the confusion matrix
  (our own numpy code), with a PNG of it;
- token tagging: entity-level precision, recall and F1 with seqeval (conlleval-compatible);
- generation: sacrebleu corpus BLEU and chrF, their sentence-level means, rouge-score ROUGE-1/2/L
  and exact match;
- extractive question answering: SQuAD's exact match and F1, as its official v1.1 script computes
  them (`SQUAD_DEFINITIONS`: a QA report's `exact_match` and `f1` are these);
- the mean and 95% confidence interval of a few repeated runs (Student's t);
- `write_report`: metrics as JSON, a markdown table, and sample predictions as JSONL.

The well-kept libraries (seqeval, sacrebleu, rouge-score, matplotlib) are imported inside the
functions that use them, so importing graft stays fast (seqeval alone pulls in scikit-learn).
"""

from __future__ import annotations

import io
import json
import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from graft.atomic_files import check_output, fsync_path, write_atomic
from graft.errors import DataError

__all__ = [
    "DEFINITIONS",
    "SQUAD_DEFINITIONS",
    "ClassificationMetrics",
    "MetricInputError",
    "classification_metrics",
    "confusion_matrix_png",
    "entity_metrics",
    "generation_metrics",
    "language_model_metrics",
    "mean_ci95",
    "normalize_answer",
    "squad_exact_match",
    "squad_f1",
    "squad_metrics",
    "sentence_scores",
    "write_report",
]


class MetricInputError(DataError, ValueError):
    """Predictions and references that cannot be scored (empty, of different lengths, unknown
    labels).

    A DataError so the CLI prints it as one line, and a ValueError because that is what a caller
    passing mismatched sequences expects to catch.
    """


DEFINITIONS: dict[str, str] = {
    # Language modelling: `loss` and `ppl` depend on the tokenizer; the last two do not.
    "loss": "mean cross-entropy in nats per token of the model's own tokenizer",
    "ppl": (
        "perplexity per token of the model's own tokenizer, exp(loss); not comparable across "
        "tokenizers"
    ),
    "bits_per_byte": (
        "total cross-entropy in bits divided by the UTF-8 bytes of the text; comparable across "
        "tokenizers"
    ),
    "word_ppl": (
        "exp(total cross-entropy in nats / whitespace-separated words); comparable across "
        "tokenizers"
    ),
    # Classification.
    "accuracy": "fraction of examples whose predicted label equals the true label",
    "macro_precision": (
        "unweighted mean over labels of TP / predicted (0 for a label never predicted)"
    ),
    "macro_recall": "unweighted mean over labels of TP / true (0 for a label never true)",
    "macro_f1": (
        "unweighted mean over labels of per-label F1 (not the F1 of macro precision and recall)"
    ),
    # Generation.
    "bleu": "sacrebleu corpus BLEU, 0-100 (nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp)",
    "chrf": "sacrebleu corpus chrF, 0-100 (nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no)",
    "rouge1": "rouge-score ROUGE-1 F-measure with Porter stemming, mean over examples, 0-1",
    "rouge2": "rouge-score ROUGE-2 F-measure with Porter stemming, mean over examples, 0-1",
    "rougeL": (
        "rouge-score ROUGE-L (longest common subsequence) F-measure with stemming, mean over "
        "examples, 0-1"
    ),
    "exact_match": (
        "fraction of predictions equal to their reference after stripping and collapsing whitespace"
    ),
    "sentence_bleu": (
        "sacrebleu sentence BLEU of each example (effective order, smooth:exp), mean over "
        "examples, 0-100; each sample's own is in the samples file"
    ),
    "sentence_chrf": (
        "sacrebleu sentence chrF of each example (nc:6|nw:0), mean over examples, 0-100; each "
        "sample's own is in the samples file"
    ),
    "count": "number of examples scored",
}
# A question-answering report's own meanings of two keys DEFINITIONS gives for generation.
SQUAD_DEFINITIONS: dict[str, str] = {
    "exact_match": (
        "SQuAD exact match, 0-100: share of questions whose answer equals a gold answer after "
        "SQuAD's normalisation (lower case, punctuation and the articles a/an/the removed, "
        "whitespace collapsed)"
    ),
    "f1": (
        "SQuAD F1, 0-100: F1 of the normalised answer's words against a gold answer's (bag of "
        "words), the best over the gold answers, averaged over questions"
    ),
}


# -- classification ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassificationMetrics:
    """Scores of one set of single-label predictions; `confusion[i][j]` counts true `labels[i]`
    predicted as `labels[j]`, and `per_class` maps a label to its precision, recall, f1, support."""

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    labels: list[str]


def _check_pair(first: Sequence[Any], second: Sequence[Any], names: tuple[str, str]) -> None:
    if len(first) == 0:
        raise MetricInputError(f"no {names[0]} to score; pass at least one example")
    if len(first) != len(second):
        raise MetricInputError(
            f"{len(first)} {names[0]} but {len(second)} {names[1]}; pass one of each per example"
        )


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio that is 0.0 where the denominator is 0."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None
) -> ClassificationMetrics:
    """Accuracy, per-class and macro precision/recall/F1, and the confusion matrix.

    `labels` fixes the label set and its order (the rows and columns of the confusion matrix);
    by default it is every label seen in either sequence, sorted. Macro averages are unweighted
    means over that whole label set, so a label that is never predicted counts with precision 0.
    Wherever a ratio's denominator is zero (a label never predicted: precision; a label never
    true: recall; precision and recall both 0: F1) the value is 0.0, with no warning, as
    scikit-learn's `zero_division=0` does.
    """
    _check_pair(y_true, y_pred, ("true labels", "predicted labels"))
    seen = set(y_true) | set(y_pred)
    if labels is None:
        label_list = sorted(seen)
    else:
        label_list = list(labels)
        if len(set(label_list)) != len(label_list):
            raise MetricInputError(f"labels repeat a name: {label_list}; list each label once")
        unknown = sorted(seen - set(label_list))
        if unknown:
            raise MetricInputError(
                f"labels {unknown} occur in the data but not in labels={label_list}; "
                "add them or leave labels unset"
            )
    index = {label: i for i, label in enumerate(label_list)}
    k = len(label_list)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, ([index[t] for t in y_true], [index[p] for p in y_pred]), 1)

    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(label_list)
    }
    return ClassificationMetrics(
        accuracy=float(tp.sum() / len(y_true)),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        per_class=per_class,
        confusion=confusion.tolist(),
        labels=label_list,
    )


def confusion_matrix_png(metrics: ClassificationMetrics) -> bytes:
    """The confusion matrix drawn as a PNG: counts in the cells, colour by row share.

    Colour is normalised per true label (each row sums to 1), so a rare class's mistakes are as
    visible as a frequent one's; the printed counts keep the absolute numbers.
    """
    # Figure + the Agg canvas directly, not pyplot: no global backend switch, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(metrics.labels)
    counts = np.asarray(metrics.confusion, dtype=np.int64).reshape(k, k)
    share = _divide(counts.astype(np.float64), counts.sum(axis=1, keepdims=True).repeat(k, 1))
    side = min(max(4.0, 0.6 * k + 2.0), 24.0)
    fontsize = 9 if k <= 12 else 7 if k <= 25 else 5
    fig = Figure(figsize=(side + 1.0, side), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true label's examples")
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if share[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), labels=metrics.labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(k), labels=metrics.labels, fontsize=fontsize)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(
        f"confusion matrix (accuracy {metrics.accuracy:.3f}, macro F1 {metrics.macro_f1:.3f})"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# -- token tagging -------------------------------------------------------------------------


def entity_metrics(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
) -> dict[str, float | dict[str, dict[str, float]]]:
    """Entity-level micro precision, recall and F1 with seqeval, and the same per entity type.

    Tags are BIO/IOBES strings per word. seqeval's default mode is used: it reads entities the way
    the CoNLL `conlleval` script does (an I- tag after O starts an entity), so scores match
    published CoNLL numbers. `support` counts true entities. A zero denominator gives 0.0.
    Returns {"precision", "recall", "f1", "support", "per_type": {type: {precision, recall, f1,
    support}}}.
    """
    from seqeval.metrics.sequence_labeling import get_entities, precision_recall_fscore_support

    _check_pair(true_tags, pred_tags, ("true tag sequences", "predicted tag sequences"))
    for i, (true_row, pred_row) in enumerate(zip(true_tags, pred_tags)):
        if len(true_row) != len(pred_row):
            raise MetricInputError(
                f"sentence {i}: {len(true_row)} true tags but {len(pred_row)} predicted; "
                "predict one tag per word"
            )
    # seqeval decides between one sequence and many by looking for list instances.
    y_true = [list(row) for row in true_tags]
    y_pred = [list(row) for row in pred_tags]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, average="micro", zero_division=0
    )
    # The same sorted type list seqeval's classification_report pairs with per-type arrays.
    types = sorted(
        {name for name, _, _ in get_entities(y_true)}
        | {name for name, _, _ in get_entities(y_pred)}
    )
    per_p, per_r, per_f, per_s = precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0
    )
    per_type = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(types, per_p, per_r, per_f, per_s)
    }
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "support": int(support),
        "per_type": per_type,
    }


# -- generation ----------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")


def _normalise_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """BLEU, chrF, ROUGE-1/2/L, exact match and count for generated text against one reference each.

    BLEU and chrF are sacrebleu corpus scores with its defaults (0-100), the form published
    numbers use. ROUGE is rouge-score's F-measure with stemming, averaged over examples (0-1);
    its default tokenizer keeps only ASCII letters and digits, so text in other scripts scores 0
    there (read chrF for those). Exact match compares after stripping and collapsing whitespace,
    case-sensitively.
    """
    import sacrebleu
    from rouge_score import rouge_scorer

    _check_pair(predictions, references, ("predictions", "references"))
    hyps, refs = list(predictions), list(references)
    bleu = sacrebleu.BLEU().corpus_score(hyps, [refs]).score
    chrf = sacrebleu.CHRF().corpus_score(hyps, [refs]).score
    kinds = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    # rouge-score takes (target, prediction)
    rouge = [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs)]
    exact = sum(_normalise_whitespace(h) == _normalise_whitespace(r) for h, r in zip(hyps, refs))
    n = len(hyps)
    sentences = [sentence_scores(hyp, ref) for hyp, ref in zip(hyps, refs)]
    return {
        "bleu": float(bleu),
        "chrf": float(chrf),
        **{kind: sum(scores[kind].fmeasure for scores in rouge) / n for kind in kinds},
        "exact_match": exact / n,
        **{key: sum(scores[key] for scores in sentences) / n for key in _SENTENCE_KEYS},
        "count": n,
    }


_SENTENCE_KEYS = ("sentence_bleu", "sentence_chrf")


def sentence_scores(prediction: str, reference: str) -> dict[str, float]:
    """sacrebleu's sentence BLEU and chrF of one prediction against its reference, 0-100: the
    `sacrebleu.sentence_bleu` and `sentence_chrf` figures. Sentence BLEU uses effective order (a
    short sentence is not zeroed by its missing 4-grams); it is a per-example diagnostic, and the
    corpus BLEU is the number to compare with published ones."""
    import sacrebleu

    return {
        "sentence_bleu": float(sacrebleu.sentence_bleu(prediction, [reference]).score),
        "sentence_chrf": float(sacrebleu.sentence_chrf(prediction, [reference]).score),
    }


# -- question answering --------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (its official evaluation script's `normalize_answer`): lower case,
    ASCII punctuation removed, the articles a, an and the removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str) -> float:
    predicted, true = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(true)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer, else 0.0. A question
    without gold answers (SQuAD v2's unanswerable) is right only with an empty answer."""
    if not golds:
        return float(not normalize_answer(prediction))
    return max(float(normalize_answer(prediction) == normalize_answer(g)) for g in golds)


def squad_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best word-overlap F1 (0-1) of the prediction against any gold answer, as SQuAD v1.1's
    script computes it; without gold answers, as exact match (SQuAD v2's rule)."""
    if not golds:
        return squad_exact_match(prediction, golds)
    return max(_f1(prediction, gold) for gold in golds)


def squad_metrics(
    predictions: Sequence[str], gold_answer_lists: Sequence[Sequence[str]]
) -> dict[str, float]:
    """SQuAD exact match and F1 (0-100, like the official script) and the count of questions:
    each question's score is its best over its gold answers (`SQUAD_DEFINITIONS`)."""
    _check_pair(predictions, gold_answer_lists, ("predictions", "gold answer lists"))
    n = len(predictions)
    pairs = list(zip(predictions, gold_answer_lists))
    return {
        "exact_match": 100.0 * sum(squad_exact_match(p, g) for p, g in pairs) / n,
        "f1": 100.0 * sum(squad_f1(p, g) for p, g in pairs) / n,
        "count": n,
    }


# -- language modelling --------------------------------------------------------------------


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def language_model_metrics(
    loss_sum_nats: float, tokens: int, text_bytes: int, words: int
) -> dict[str, float]:
    """Per-token loss and perplexity beside tokenizer-free bits per byte and per-word perplexity.

    `loss_sum_nats` is the summed cross-entropy over `tokens` scored tokens of a text that is
    `text_bytes` UTF-8 bytes and `words` whitespace-separated words long (count bytes and words
    over exactly the scored text). `DEFINITIONS` holds each key's meaning.
    """
    for name, value in (("tokens", tokens), ("text_bytes", text_bytes), ("words", words)):
        if value <= 0:
            raise MetricInputError(f"{name} must be positive to normalise the loss, got {value}")
    loss = loss_sum_nats / tokens
    return {
        "loss": loss,
        "ppl": _exp(loss),
        "bits_per_byte": loss_sum_nats / (math.log(2) * text_bytes),
        "word_ppl": _exp(loss_sum_nats / words),
    }


# -- repeated runs -------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t (the 0.975 quantile), degrees of freedom 1..30, ten a row.
_T975 = (
    (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
    + (2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
    + (2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
)
_Z975 = 1.959963984540054


def _t975(df: int) -> float:
    if df <= len(_T975):
        return _T975[df - 1]
    # Past the table, the Cornish-Fisher expansion of t around the normal quantile: within 1e-4
    # of the exact value from df 30 on, where a flat 1.96 would jump by 0.08 between df 30 and 31.
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided 95% confidence interval by Student's t.

    The half-width is t(0.975, n-1) * s / sqrt(n) with s the sample standard deviation (n-1 in
    the denominator). One value has no spread to estimate: (v, v, v).
    """
    if len(values) == 0:
        raise MetricInputError("no values to average; pass at least one")
    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean())
    if len(data) == 1:
        return mean, mean, mean
    half = _t975(len(data) - 1) * float(data.std(ddof=1)) / math.sqrt(len(data))
    return mean, mean - half, mean + half


# -- reports -------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, (int, np.integer)):
        text = str(int(value))
    elif isinstance(value, (float, np.floating)):
        text = f"{float(value):.4f}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_cell(v) for v in value)
    else:
        text = str(value)
    # A pipe would end the cell; a newline would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, np.integer, np.floating)) or value is None


def _to_json(value: Any) -> Any:
    """Plain JSON types for numpy scalars, arrays and tuples, which json cannot write."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def _section(key: str, value: Any, labels: Any) -> list[str]:
    """Markdown for one non-scalar metric: a table for nested mappings and matrices."""
    lines = ["", f"## {_cell(key)}", ""]
    if isinstance(value, Mapping):
        inner = list(value.values())
        if inner and all(isinstance(v, Mapping) for v in inner):
            columns = list(dict.fromkeys(c for v in inner for c in v))
            rows = [
                [_cell(name), *(_cell(v.get(c, "")) for c in columns)] for name, v in value.items()
            ]
            return lines + _table([_cell(key), *map(_cell, columns)], rows)
        return lines + _table(["key", "value"], [[_cell(k), _cell(v)] for k, v in value.items()])
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(r, (list, tuple)) for r in value)
    ):
        # A matrix such as ClassificationMetrics.confusion: rows = true, columns = predicted.
        names = (
            [_cell(x) for x in labels]
            if isinstance(labels, (list, tuple)) and len(labels) == len(value)
            else [str(i) for i in range(len(value))]
        )
        width = max(len(r) for r in value)
        columns = names if len(names) == width else [str(j) for j in range(width)]
        rows = [[names[i], *(_cell(c) for c in row)] for i, row in enumerate(value)]
        return (
            lines
            + ["rows: true, columns: predicted", ""]
            + _table(["true \\ predicted", *columns], rows)
        )
    return lines + [_cell(value)]


def _markdown(name: str, metrics: Mapping[str, Any]) -> str:
    scalars = {k: v for k, v in metrics.items() if _is_scalar(v)}
    lists = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (list, tuple)) and all(_is_scalar(x) for x in v)
    }
    lines = [f"# {_cell(name)}", ""]
    # A report may carry its own definitions (keys DEFINITIONS lacks); they go in the column, not a
    # table of their own.
    own = metrics.get("definitions")
    definitions = {**DEFINITIONS, **(own if isinstance(own, Mapping) else {})}
    rows = [
        [_cell(k), _cell(v), _cell(definitions.get(str(k), ""))]
        for k, v in {**scalars, **lists}.items()
    ]
    if rows:
        lines += _table(["metric", "value", "definition"], rows)
    for key, value in metrics.items():
        if key not in scalars and key not in lists and not (key == "definitions" and value is own):
            lines += _section(str(key), value, metrics.get("labels"))
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    name: str,
    metrics: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]] = (),
    files: Mapping[str, bytes] | None = None,
) -> tuple[Path, Path]:
    """Write `{name}.json`, `{name}.md`, given samples `{name}_samples.jsonl`, and `files` (more
    files of the report by name, such as a figure) into `out_dir`.

    The JSON holds `metrics` as given (pass `dataclasses.asdict` of a ClassificationMetrics).
    The markdown has one table of the scalar metrics, with each key's definition from
    `DEFINITIONS` where it has one, then a table per nested mapping (per class, per entity type)
    and per matrix (the confusion matrix, headed by `labels` when present). Non-finite floats are
    written as JSON `Infinity`/`NaN`, which Python's json reads back.

    The files replace the last report's as one, though each is its own atomic write: everything
    is rendered first; then the last report's `{name}.json` is deleted, then its other files
    (samples it had and this one has not included), and the new files are written with
    `{name}.json` last. So `{name}.json` is only ever beside the files written with it, and a
    run stopped part-way leaves files of one run and no `{name}.json`: a reader that finds
    `{name}.json` has the whole report. Returns (json path, markdown path).
    """
    for given in (name, *(files or {})):
        if not given or Path(given).name != given or given.startswith("."):
            raise MetricInputError(
                f"report name {given!r} must be a plain file name such as 'eval'"
            )
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    samples_path = out_dir / f"{name}_samples.jsonl"
    index = json.dumps(_to_json(metrics), indent=2) + "\n"
    parts: dict[Path, str | bytes] = {md_path: _markdown(name, metrics)}
    if samples:
        lines = (json.dumps(_to_json(sample), ensure_ascii=False) for sample in samples)
        parts[samples_path] = "".join(line + "\n" for line in lines)
    parts.update({out_dir / file: data for file, data in (files or {}).items()})
    others = dict.fromkeys([samples_path, *parts])  # what the last report may have left
    for path in (json_path, *others):
        check_output(path)  # a folder in a file's place: refused before anything is deleted
    if out_dir.is_dir():
        json_path.unlink(missing_ok=True)
        fsync_path(out_dir)  # gone for good before any other file changes
        for path in others:
            path.unlink(missing_ok=True)
    for path, data in parts.items():
        write_atomic(path, data)
    write_atomic(json_path, index)
    return json_path, md_path
