"""Looking at a model: `graft eval`, `extract`, `runs compare` and `explain`, each a parser and
its runner."""

from __future__ import annotations

import argparse
from pathlib import Path

from graft.cli.common import COMMON, add_shared, options_from


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        parents=[COMMON],
        help="Evaluate a checkpoint: perplexity, classification, tagging or generation.",
        description="lm: loss and perplexity per token of the model's tokenizer, beside bits per "
        "byte and per-word perplexity (comparable across tokenizers). classify: accuracy, "
        "precision, recall, F1 (macro and per class) and a confusion-matrix PNG. tokens: seqeval "
        "entity F1. generate: greedy (or --beams N beam search) decoding scored with corpus and "
        "mean sentence BLEU and chrF, ROUGE-1/2/L and exact match, and the share that ended with "
        "eos (per-sample sentence BLEU and chrF in the samples). qa: SQuAD exact match "
        "and F1 of the answers a span head picks. Writes <task>.json, <task>.md and "
        "<task>_samples.jsonl into --out.",
    )
    add_shared(p, "checkpoint")
    p.add_argument(
        "--task",
        required=True,
        choices=["lm", "classify", "tokens", "generate", "qa"],
        help="lm: text files; classify: labelled records; tokens: CoNLL/JSONL tags; generate: "
        "Alpaca, chat or source/target records; qa: SQuAD JSON or JSONL questions",
    )
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="evaluation data (files; folders for lm; with --source-lang and --target-lang, the "
        "PREFIX of parallel files PREFIX.SRC and PREFIX.TGT)",
    )
    p.add_argument("--out", type=Path, help="report folder (default: <run dir>/eval, or ./eval)")
    p.add_argument("--text-field", help="classify: text field (default: text)")
    p.add_argument("--label-field", help="classify: label field (default: label)")
    p.add_argument(
        "--encoding", help="encoding of labelled, tagged or instruction files (default: utf-8)"
    )
    p.add_argument("--limit", type=int, help="evaluate the first N records (documents for lm) only")
    p.add_argument("--max-new-tokens", type=int, help="generate: longest generation (default: 128)")
    p.add_argument(
        "--beams",
        type=int,
        help="generate: beam search with N beams, stopping once N hypotheses have ended "
        "(default: 1, greedy)",
    )
    p.add_argument(
        "--length-penalty",
        type=float,
        help="generate, with --beams: hypotheses score summed log-probability / length ** X "
        "(default: 1.0)",
    )
    p.add_argument(
        "--source-lang",
        help="generate: read --data as parallel files, the sources from PREFIX.SRC (or .SRC.gz)",
    )
    p.add_argument(
        "--target-lang", help="generate: the references from PREFIX.TGT (or .TGT.gz), line by line"
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="generate, qa: skip and count bad records (an empty source or target; a question "
        "whose answer is not at its answer_start, or too long for the window) instead of stopping",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        help="lm: tokens each window predicts (lm-eval's rolling windows; default: the model's "
        "context); classify, tokens, qa: longest input (default: the context the checkpoint "
        "was fine-tuned on, its train.seq_len, else the model's)",
    )
    p.add_argument("--batch-size", type=int, help="sequences per forward pass (default: 8)")
    p.add_argument(
        "--stride",
        type=int,
        help="qa: context tokens consecutive windows share (default: the checkpoint's "
        "objective.stride)",
    )
    p.add_argument(
        "--max-answer-tokens",
        type=int,
        help="qa: longest answer in tokens (default: the checkpoint's objective.max_answer_tokens)",
    )
    add_shared(p, "--device")


def run_eval(args: argparse.Namespace) -> int:
    from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint

    report = evaluate_checkpoint(options_from(EvalOptions, args, data=tuple(args.data)), echo=print)
    print(report.with_suffix(".md").read_text(encoding="utf-8"), end="")
    print(f"report: {report}")
    return 0


def add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        parents=[COMMON],
        help="Extract named entities from documents with a token-classification checkpoint.",
        description="Splits each document into words with their character offsets (brackets, "
        "quotes, most punctuation and clitics split off; abbreviations keep their period), "
        "tags them through the same path `graft finetune tokens` trained on and `graft eval "
        "--task tokens` scores, and writes one JSON line per entity: text, label, start, end "
        "(character offsets), doc (its location), source, doc_sha256 and score (mean probability "
        "of its tags). A document longer than the context is read in windows of whole sentences.",
    )
    add_shared(p, "checkpoint")
    p.add_argument(
        "docs",
        type=Path,
        nargs="+",
        help="corpus files (.jsonl, .jsonl.zst from graft data collect), .txt/.md files (one "
        "document each) or folders of them",
    )
    p.add_argument("--out", type=Path, required=True, help="JSONL file of entities to write")
    p.add_argument(
        "--seq-len",
        type=int,
        help="longest input in tokens (default: the context the checkpoint was fine-tuned on, "
        "else the model's)",
    )
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: 8)")
    add_shared(p, "--device", "--no-progress")


def run_extract(args: argparse.Namespace) -> int:
    from graft.evaluate.extract import ExtractOptions, extract_entities

    options = options_from(
        ExtractOptions, args, docs=tuple(args.docs), progress=not args.no_progress
    )
    summary = extract_entities(options, echo=print)
    kinds = ", ".join(f"{label} {n:,}" for label, n in summary.labels.items()) or "none"
    print(
        f"{summary.entities:,} entities ({kinds}) in {summary.documents:,} documents, "
        f"{summary.windows:,} windows ({summary.truncated:,} cut to the context)"
    )
    if summary.problems:
        print(summary.problems.summary())
    print(f"entities: {args.out}")
    return 0


def add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="Look at training runs side by side.")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = rsub.add_parser(
        "compare",
        parents=[COMMON],
        help="Compare runs on one self-contained HTML page.",
        description="Overlays the runs' training and validation loss, learning rate, throughput "
        "and validation-metric curves (inline SVG: the page needs no network), lists the "
        "resolved-config keys whose values differ, and their final metrics. A run without metrics "
        "or config, or a metric another objective does not log, is left out with a note.",
    )
    c.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    c.add_argument("--out", type=Path, required=True, help="HTML file to write")


def run_runs(args: argparse.Namespace) -> int:
    from graft.insight.compare import compare_runs

    comparison = compare_runs(args.runs, args.out)
    for note in comparison.notes:
        print(f"note: {note}")
    print(f"report: {comparison.out}")
    return 0


def add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        parents=[COMMON],
        help="Explain how a checkpoint reads a text: PNGs and an HTML page.",
        description="Attention maps per layer and head, attention rollout, per-token loss "
        "(causal LMs), a logit lens (what each layer would predict) and, for sequence "
        "classifiers, integrated-gradients token attributions as coloured text. A text longer "
        "than the context is explained as far as it fits, with a note of what was left out. "
        "Writes index.html and its PNG files into --out (replaced whole).",
    )
    add_shared(p, "checkpoint")
    p.add_argument("--text", required=True, help="the text to explain")
    p.add_argument(
        "--label", help="sequence classifiers: the label to attribute (default: the predicted one)"
    )
    p.add_argument("--steps", type=int, help="integrated gradients: trapezoid steps (default: 48)")
    p.add_argument(
        "--out",
        type=Path,
        help="directory for index.html and PNGs (default: RUN/explain for a checkpoint in a run "
        "directory, which `graft export` then carries and the model card links)",
    )
    add_shared(p, "--device")


def run_explain(args: argparse.Namespace) -> int:
    from graft.insight.explain import ExplainOptions, explain

    page, explanation = explain(options_from(ExplainOptions, args))
    for note in explanation.notes:
        print(f"note: {note}")
    print(f"explained {len(explanation.ids)} tokens: {page}")
    return 0
