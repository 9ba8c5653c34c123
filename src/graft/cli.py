"""The `graft` command: parse arguments, call one library function, print the result.

Every subcommand is one import away in Python; nothing here trains, tokenizes or samples by
itself. A GraftError (bad input) prints as one line on stderr and exits 2; `--debug` shows the
traceback. Ctrl-C exits 130, leaving the last complete checkpoint in place. An experiment whose
report holds a failed run exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from graft.errors import GraftError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from graft.config import RunConfig
    from graft.infer.beam import BeamParams
    from graft.infer.sampling import SamplingParams

_Options = TypeVar("_Options", bound="DataclassInstance")

# graft.infer.sampling.DEFAULT_TEMPERATURE, written out so that --help needs no torch import
# (tests/e2e/test_cli.py holds them equal).
_TEMPERATURE_HELP = "0 = greedy (default: 0.8)"

EXIT_RUNS_FAILED = 1  # an experiment ran to its report, but some of its runs failed
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it

# Options every command takes, before or after its name (graft --debug pretrain /
# graft pretrain --debug).
_COMMON = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument(
    "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
)

# Flags several commands take alike, so each has one help text.
_SHARED: dict[str, dict[str, Any]] = {
    "checkpoint": {
        "type": Path,
        "help": "checkpoint directory, run directory or Hugging Face directory",
    },
    "--device": {"help": "cpu, cuda, cuda:N, mps or auto (default: cpu)"},
    "--no-progress": {"action": "store_true", "help": "no progress bars"},
    "--resume": {
        "action": "store_true",
        "help": "continue the run in train.out_dir from checkpoints/last",
    },
    "--print-config": {"action": "store_true", "help": "print the resolved config and exit"},
    "--text-field": {"help": "text field of the labelled records (default: text)"},
    "--label-field": {"help": "label field of the labelled records (default: label)"},
}


def _add_shared(parser: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        parser.add_argument(name, **_SHARED[name])


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quickstart",
        parents=[_COMMON],
        help="Pre-train a small model on a corpus built from this Python installation.",
        description="The embedded default: builds a corpus from the running Python's standard "
        "library and documentation (nothing downloaded), trains a tokenizer, prepares shards, "
        "pre-trains a small model on a budget of tokens, fine-tunes it on two tasks from the same "
        "installation (a function's package; its docstring's first line) against training from "
        "scratch (classification over 3 seeds per arm), and writes a report.",
    )
    p.add_argument(
        "--tokens",
        type=int,
        default=1_500_000,
        help="pre-training tokens (default: 1500000, about 5 minutes on 2 idle cores)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/quickstart"),
        help="run directory, replaced if it exists",
    )
    p.add_argument("--preset", default="micro", help="model preset (default: micro)")
    p.add_argument(
        "--corpus-mb", type=float, default=8.0, help="corpus size in MB of text (default: 8)"
    )
    p.add_argument(
        "--vocab-size", type=int, default=4096, help="BPE vocabulary size (default: 4096)"
    )
    p.add_argument("--seed", type=int, default=1337)
    _add_shared(p, "--no-progress")
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=70,
        help="steps of each of the eight fine-tuning runs (default: 70, about 4.5 minutes in all "
        "on 2 idle cores)",
    )
    p.add_argument(
        "--skip-finetune", action="store_true", help="stop after pre-training; nothing is held out"
    )


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="Train a tokenizer.")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser(
        "train",
        parents=[_COMMON],
        help="Train BPE (default), WordPiece or Unigram on text; or write the bytes tokenizer.",
    )
    t.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help=".txt/.md/.jsonl files or folders (not needed for --kind bytes)",
    )
    t.add_argument("--kind", choices=["bpe", "wordpiece", "unigram", "bytes"], default="bpe")
    # None when not given: --kind bytes trains nothing and unigram has no frequency floor, so
    # either refuses them rather than ignore them.
    t.add_argument("--vocab-size", type=int, help="tokens, specials included (default 8192)")
    t.add_argument(
        "--min-frequency", type=int, help="bpe, wordpiece: rarest pair merged (default 2)"
    )
    t.add_argument(
        "--sentinels",
        type=int,
        default=0,
        help="add N span-corruption sentinel tokens <|sentinel_0|>... (needed by --objective "
        "denoise, t5 style)",
    )
    t.add_argument("--out", type=Path, required=True, help="directory for tokenizer.json")


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="Prepare token shards from text.")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = dsub.add_parser(
        "prepare",
        parents=[_COMMON],
        help="Tokenize .txt/.md/.jsonl inputs into train/val token shards.",
    )
    d.add_argument("inputs", nargs="+", type=Path, help="files or folders")
    d.add_argument(
        "--tokenizer", required=True, help="tokenizer.json, a directory holding one, or 'bytes'"
    )
    d.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    d.add_argument("--val-fraction", type=float, default=0.1)
    d.add_argument(
        "--val",
        nargs="+",
        type=Path,
        default=None,
        help="held-out files or folders for the val split (then all inputs are training data)",
    )
    d.add_argument(
        "--split-on",
        default=None,
        metavar="REGEX",
        help="start a new document at each line of a .txt/.md file matching REGEX "
        "(e.g. '^ = [^=].* = $' for WikiText's article titles); default: one document per file",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    d.add_argument(
        "--redact",
        default="",
        metavar="KINDS",
        help="replace sensitive text before tokenizing: a comma list of email, phone, card, "
        "iban, ip, url_credentials, name, or all",
    )
    d.add_argument(
        "--redact-names",
        type=Path,
        metavar="FILE",
        help="names to redact, one per line (UTF-8); implies the name kind",
    )
    d.add_argument(
        "--redact-mode",
        choices=["mask", "pseudonym"],
        default="mask",
        help="mask writes [EMAIL], [PHONE]...; pseudonym a consistent fake of the same kind",
    )
    d.add_argument(
        "--redact-seed", type=int, default=0, help="the key of the pseudonyms (default 0)"
    )
    _add_data_recipe(dsub)
    for add in (_add_data_collect, _add_data_clean, _add_data_get, _add_data_report):
        add(dsub)


def _progress(args: argparse.Namespace) -> bool:
    """A corpus step shows a progress bar unless told not to or writing to a pipe, where the
    bars of the steps before and after it would overwrite each other on the terminal."""
    return not args.no_progress and str(args.out) != "-"


# `graft data collect|clean|dedup|redact|get|report`: each pair below (parser, runner) is
# registered in _add_data and _DATA_ACTIONS.
def _add_data_collect(dsub: argparse._SubParsersAction) -> None:
    c = dsub.add_parser(
        "collect",
        parents=[_COMMON],
        help="Gather documents from files, folders, globs, URLs and WARC archives into a JSONL.",
        description="One document per .txt/.md/.rst/.html file (the main text of a page, "
        "without menus, footers and scripts), per line of .jsonl/.jsonl.zst, per row of "
        ".csv/.tsv/.parquet, per HTML or text response of .warc/.warc.gz, per URL. URLs are "
        "fetched politely: robots.txt obeyed, one request per host every --rate seconds, "
        "retries with back-off, a local cache. Bad inputs are reported and skipped.",
    )
    c.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="files, folders (read recursively), globs or http(s) URLs",
    )
    c.add_argument(
        "--out", type=Path, required=True, help="corpus to write: .jsonl or .jsonl.zst, or -"
    )
    c.add_argument(
        "--urls", type=Path, metavar="FILE", help="URLs to fetch, one a line (# comments)"
    )
    c.add_argument(
        "--text-field", default="text", metavar="NAME", help="text field of .jsonl (default: text)"
    )
    c.add_argument(
        "--text-column",
        default="text",
        metavar="NAME",
        help="text column of .csv/.tsv/.parquet (default: text)",
    )
    c.add_argument("--licence", metavar="ID", help="licence of every local file's documents")
    c.add_argument(
        "--user-agent", metavar="TEXT", help="User-Agent for fetching; name a contact in it"
    )
    c.add_argument(
        "--rate",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="least time between requests to one host (default 1; a larger Crawl-delay wins)",
    )
    c.add_argument(
        "--max-bytes",
        type=int,
        metavar="N",
        default=20_000_000,
        help="largest page or WARC record read, in bytes (default 20000000)",
    )
    c.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="folder of fetched pages, so a rerun fetches nothing twice "
        "(default ~/.cache/graft/fetch)",
    )
    c.add_argument("--no-cache", action="store_true", help="fetch every URL, keep nothing")
    c.add_argument(
        "--workers", type=int, default=0, metavar="N", help="HTML processes (default: one a core)"
    )
    c.add_argument("--strict", action="store_true", help="stop at the first bad input")
    _add_shared(c, "--no-progress")


def _run_data_collect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from graft.data.collect import CollectOptions, collect_to
    from graft.data.corpus import Problems
    from graft.data.fetch import DEFAULT_CACHE, DEFAULT_USER_AGENT, FetchOptions
    from graft.errors import DataError

    for flag, value, least in (("--rate", args.rate, 0), ("--max-bytes", args.max_bytes, 1)):
        if value < least:
            raise DataError(f"{flag} {value}: expected a number >= {least}")
    if args.workers < 0:
        raise DataError(f"--workers {args.workers}: expected 0 (one a core) or more")
    options = CollectOptions(
        text_field=args.text_field,
        text_column=args.text_column,
        licence=args.licence,
        urls=args.urls,
        workers=args.workers,
        fetch=FetchOptions(
            user_agent=args.user_agent or DEFAULT_USER_AGENT,
            rate=args.rate,
            max_bytes=args.max_bytes,
            cache=None if args.no_cache else (args.cache or DEFAULT_CACHE),
        ),
    )
    # Problems print above the progress bar (tqdm.write keeps the bar whole).
    problems = Problems(strict=args.strict, say=lambda line: tqdm.write(line, file=sys.stderr))
    stats = collect_to(args.sources, args.out, options, problems=problems, progress=_progress(args))
    summary = (
        f"collect: {stats.docs_out:,} documents, {stats.bytes_out / 1e6:.1f} MB of text, "
        f"{stats.mb_per_s():.1f} MB/s read, {problems.summary()}: {args.out}"
    )
    print(summary, file=sys.stderr if str(args.out) == "-" else sys.stdout)
    return 0


def _add_data_clean(dsub: argparse._SubParsersAction) -> None:
    """clean, dedup, redact: corpus in (files or - for stdin), corpus out (a file or -)."""
    from dataclasses import fields as dataclass_fields

    from graft.data.clean import QualityConfig

    def corpus_step(name: str, help: str, description: str) -> argparse.ArgumentParser:
        p = dsub.add_parser(name, parents=[_COMMON], help=help, description=description)
        p.add_argument(
            "inputs", nargs="+", type=Path, help="corpus files (.jsonl, .jsonl.zst; - for stdin)"
        )
        p.add_argument(
            "--out",
            type=Path,
            required=True,
            help="corpus to write (.jsonl, .jsonl.zst; - for stdout); a file gets a "
            "statistics file beside it (OUT.stats.json)",
        )
        p.add_argument("--workers", type=int, default=0, help="processes (default: one a core)")
        p.add_argument("--strict", action="store_true", help="stop at the first bad input line")
        _add_shared(p, "--no-progress")
        return p

    c = corpus_step(
        "clean",
        "Normalise a corpus, label its languages and drop low-quality documents.",
        "Unicode repaired (ftfy) and normalised (NFC, no control characters, tidy whitespace), "
        "the language identified (py3langid), then the Gopher quality rules (Rae et al. 2021) "
        "with their thresholds as options; a dropped document counts under the first rule "
        "it fails. Example: graft data collect docs/ --out - | graft data clean - --lang en "
        "--out clean.jsonl",
    )
    c.add_argument("--lang", help="keep only these languages (comma list of ISO 639-1 codes)")
    c.add_argument(
        "--min-lang-score",
        type=float,
        default=0.0,
        help="keep only documents whose language has at least this probability (0-1)",
    )
    c.add_argument("--no-langid", action="store_true", help="no language identification")
    c.add_argument("--no-quality", action="store_true", help="no quality rules")
    c.add_argument(
        "--rejects", type=Path, metavar="FILE", help="write dropped documents here, with the rule"
    )
    rules = c.add_argument_group("quality rules (Gopher's defaults; 'off' turns one off)")
    for spec in dataclass_fields(QualityConfig):
        rules.add_argument(
            "--" + spec.name.replace("_", "-"),
            type=QualityConfig.option_type(spec.name),
            default=argparse.SUPPRESS,
            metavar="X",
            help=QualityConfig.option_help(spec.name),
        )

    d = corpus_step(
        "dedup",
        "Drop exact and near-duplicate documents, and those overlapping evaluation sets.",
        "Exact duplicates (same normalised text), near-duplicates (MinHash LSH over word "
        "shingles: estimated Jaccard >= --threshold with an earlier document) and, with "
        "--decontaminate, documents sharing a --decontam-n word n-gram with an evaluation "
        "set. The first document of each group is kept.",
    )
    d.add_argument(
        "--threshold",
        type=float,
        default=0.6,
        help="Jaccard similarity of near-duplicates (default 0.6: catches copies with 2-5%% "
        "of words edited)",
    )
    d.add_argument("--shingle", type=int, default=3, help="words a shingle (default 3)")
    d.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default 128)")
    d.add_argument("--no-near", action="store_true", help="exact deduplication only")
    d.add_argument("--no-exact", action="store_true", help="no exact deduplication")
    d.add_argument(
        "--clusters",
        type=Path,
        metavar="FILE",
        help="write each group of duplicates (kept and dropped locations) as JSONL",
    )
    d.add_argument(
        "--decontaminate",
        nargs="+",
        type=Path,
        default=[],
        metavar="EVAL_FILE",
        help="evaluation sets: .jsonl(.zst) with a text field, or text files read whole",
    )
    d.add_argument(
        "--decontam-n", type=int, default=13, help="words of a shared n-gram (default 13)"
    )
    d.add_argument(
        "--decontam-field", default="text", help="text field of evaluation .jsonl (default text)"
    )

    r = corpus_step(
        "redact",
        "Mask or pseudonymise e-mails, phone numbers, card numbers, IBANs, IPs, names...",
        "The detectors and replacements of graft data prepare --redact, as a corpus step.",
    )
    r.add_argument(
        "--kinds",
        default="all",
        help="comma list of email, phone, card, iban, ip, url_credentials, name, or all "
        "(default all)",
    )
    r.add_argument(
        "--names", type=Path, metavar="FILE", help="names to redact, one a line (adds name)"
    )
    r.add_argument("--mode", choices=["mask", "pseudonym"], default="mask")
    r.add_argument("--seed", type=int, default=0, help="the key of the pseudonyms (default 0)")


def _run_data_clean(args: argparse.Namespace) -> int:
    import contextlib

    from tqdm import tqdm

    from graft.atomic_files import check_output
    from graft.data.corpus import CorpusWriter, Problems
    from graft.data.stages import Stage, run_stage, summary_line
    from graft.errors import ConfigError

    if args.workers < 0:
        raise ConfigError(f"--workers: expected 0 (one a core) or more, got {args.workers}")
    # Every output checked before the work: --out is committed first, and a --rejects or
    # --clusters path refused after it would leave a run half written.
    for option in ("out", "rejects", "clusters"):
        path = getattr(args, option, None)
        if path is not None and str(path) != "-":
            check_output(path)
    workers = args.workers or None
    # Problems print above the progress bar (tqdm.write keeps the bar whole).
    problems = Problems(strict=args.strict, say=lambda line: tqdm.write(line, file=sys.stderr))
    dedup = None
    with contextlib.ExitStack() as stack:
        stage: Stage
        if args.action == "clean":
            from dataclasses import fields as dataclass_fields

            from graft.data.clean import CleanConfig, CleanStage, QualityConfig

            names = [f.name for f in dataclass_fields(QualityConfig)]
            quality = QualityConfig(**{n: getattr(args, n) for n in names if hasattr(args, n)})
            config = CleanConfig(
                langid=not args.no_langid,
                langs=tuple(c.strip() for c in (args.lang or "").split(",") if c.strip()),
                min_lang_score=args.min_lang_score,
                quality=None if args.no_quality else quality,
                workers=workers,
            )
            if args.rejects is not None and str(args.rejects) == "-" == str(args.out):
                raise ConfigError("--rejects and --out cannot both be stdout (-)")
            rejects = stack.enter_context(CorpusWriter(args.rejects)) if args.rejects else None
            stage = CleanStage(config, on_reject=rejects.write if rejects else None)
        elif args.action == "dedup":
            from graft.data.dedup import DedupConfig, DedupStage

            dedup = DedupStage(
                DedupConfig(
                    exact=not args.no_exact,
                    near=not args.no_near,
                    threshold=args.threshold,
                    shingle=args.shingle,
                    num_perm=args.num_perm,
                    decontaminate=tuple(args.decontaminate),
                    decontam_n=args.decontam_n,
                    decontam_field=args.decontam_field,
                    clusters=args.clusters is not None,
                    workers=workers,
                )
            )
            stage = dedup
        else:
            from graft.data.redact import RedactConfig
            from graft.data.redact_stage import RedactStage

            if "name" in args.kinds.split(",") and args.names is None:
                raise ConfigError("--kinds: the name kind needs a file of names (--names FILE)")
            redact = RedactConfig.from_options(
                args.kinds, names_file=args.names, mode=args.mode, seed=args.seed, option="--kinds"
            )
            if redact is None:
                raise ConfigError("--kinds: name at least one kind to redact (or all)")
            stage = RedactStage(redact, workers=workers)
        stats = run_stage(stage, args.inputs, args.out, problems=problems, progress=_progress(args))
    if dedup is not None and args.clusters is not None:
        from graft.atomic_files import write_atomic

        lines = "".join(cluster.to_json() + "\n" for cluster in dedup.clusters)
        write_atomic(args.clusters, lines)
    # On stderr, so a pipe's next step reads only documents.
    extra = f"; {problems.summary()}" if problems else ""
    print(f"{summary_line(stats)}{extra}: {args.out}", file=sys.stderr)
    return 0


def _add_data_get(dsub: argparse._SubParsersAction) -> None:
    g = dsub.add_parser(
        "get",
        parents=[_COMMON],
        help="Download a known public dataset, check its sha256 and convert it to graft's formats.",
        description="Fetches the dataset's files (upstream GitHub URLs pinned to a commit, a "
        "mirror given by --base-url or $GRAFT_DATA_URL, or a local folder with --from), checks "
        "every file against its sha256 (a mismatch is an error that leaves no file behind), "
        "keeps verified downloads in --cache, and writes the converted files with a DATASET.md "
        "(sources, sha256, licence, citation, what reads each file) into --out. "
        "graft data get --list shows the datasets.",
    )
    g.add_argument("name", nargs="?", help="dataset (see --list)")
    g.add_argument("--list", action="store_true", help="list the datasets with their licences")
    g.add_argument(
        "--out", type=Path, help="output folder (replaced atomically; new, empty or an older get)"
    )
    g.add_argument(
        "--cache",
        type=Path,
        help="folder for verified downloads (default: ~/.cache/graft/datasets)",
    )
    g.add_argument(
        "--base-url",
        help="fetch each file from URL/<relative path> instead of upstream "
        "(default: $GRAFT_DATA_URL, else upstream)",
    )
    g.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        metavar="DIR",
        help="read the files from a local folder laid out like the relative paths (no download)",
    )
    g.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait on the server (default: 60)"
    )


def _run_data_get(args: argparse.Namespace) -> int:
    from graft.data.public import ENV_BASE_URL, get_dataset, list_datasets

    if args.list:
        print("\n".join(list_datasets()))
        return 0
    if args.name is None or args.out is None:
        raise GraftError("data get: give a dataset NAME and --out DIR (graft data get --list)")
    result = get_dataset(
        args.name,
        args.out,
        cache=args.cache,
        base_url=args.base_url or os.environ.get(ENV_BASE_URL) or None,
        from_dir=args.from_dir,
        timeout=args.timeout,
        echo=print,
    )
    print(f"{result.dataset.name}: {result.out}")
    for output in result.outputs:
        print(f"  {output.name}: {output.what}")
    print(f"  DATASET.md: sources, sha256, licence ({result.dataset.licence}), citation")
    print("next:")
    for step in result.next_steps():
        print(f"  {step}")
    return 0


def _add_data_report(dsub: argparse._SubParsersAction) -> None:
    r = dsub.add_parser(
        "report",
        parents=[_COMMON],
        help="Describe a collected corpus: sizes, lengths, languages, sources, licences, "
        "duplicates and the pipeline steps that made it.",
        description="Reads the corpus once (constant memory but for one hash per distinct text) "
        "and writes a markdown page with a document-length histogram (PNG) beside it: documents, "
        "characters, words, bytes; median, p10 and p90 length; language, source, host or folder "
        "and licence mix; duplicate texts by sha256; and, from DOCS.stats.json when it exists, "
        "each pipeline step's documents and MB in and out, seconds, MB/s and rejections by "
        "reason.",
    )
    r.add_argument("docs", nargs="+", type=Path, help="corpus files (.jsonl, .jsonl.zst)")
    r.add_argument(
        "--out",
        type=Path,
        help="markdown file to write (default: DOCS.report.md, of the first DOCS)",
    )


def _run_data_report(args: argparse.Namespace) -> int:
    from graft.data.corpus import Problems
    from graft.data.report import write_report

    problems = Problems(say=lambda line: print(line, file=sys.stderr))
    out, profile = write_report(args.docs, args.out, problems)
    print(
        f"{profile.documents:,} documents, {profile.characters:,} characters, "
        f"{profile.duplicates:,} duplicate texts"
    )
    if problems:
        print(problems.summary())
    print(f"report: {out}")
    return 0


def _add_data_recipe(dsub: argparse._SubParsersAction) -> None:
    r = dsub.add_parser(
        "recipe",
        parents=[_COMMON],
        help="Clean a local copy of a known corpus into a JSONL of documents.",
        description="gutenberg: each Project Gutenberg book, licence boilerplate removed; "
        "wikitext: each article of a WikiText *.tokens file, with its tokenisation undone. "
        "Nothing is downloaded.",
    )
    r.add_argument("name", choices=["gutenberg", "wikitext"])
    r.add_argument("sources", nargs="+", type=Path, help="files or folders of the corpus")
    r.add_argument(
        "--out",
        type=Path,
        required=True,
        help='JSONL file to write (one {"text": ...} per document)',
    )


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        parents=[_COMMON],
        help="Pre-train a model with a YAML recipe and --section.key=value overrides.",
        description="Example: graft pretrain --config configs/pretrain/micro.yaml "
        "--data.path runs/data --train.max_steps=500. Overrides are --section.key=value or "
        "--section.key value.",
    )
    p.add_argument("--config", type=Path, help="YAML recipe (see configs/pretrain/)")
    _add_shared(p, "--resume", "--print-config")
    # Shortcuts for the settings changed most often; each is the dotted override named in its help.
    p.add_argument(
        "--objective",
        # Held equal to the shard objectives' names by tests/objectives/test_plugins.py.
        help="clm, mlm, nsp, mlm+nsp, denoise or mix (objective.name), default clm",
    )
    p.add_argument("--data", help="prepared data directory (data.path)")
    p.add_argument(
        "--init",
        help="continue pre-training from a checkpoint or Hugging Face directory (train.init)",
    )
    p.add_argument(
        "--replay", help="prepared general data replayed against forgetting (data.replay_path)"
    )
    p.add_argument(
        "--replay-fraction",
        help="fraction of batches from --replay (data.replay_fraction, default 0.1)",
    )
    p.add_argument("--out", help="run directory (train.out_dir)")


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="Fine-tune a checkpoint or Hugging Face model on labelled data."
    )
    tsub = p.add_subparsers(dest="task", required=True, metavar="TASK")
    helps = {
        "classify": "sequence classification from JSONL/JSON/CSV/TSV (text and label columns)",
        "tokens": "token classification (BIO tags) from CoNLL or JSONL",
        "instruct": "instruction following from Alpaca-style or chat (messages) records",
        "seq2seq": "translation or summarisation from JSONL source/target records, or parallel "
        "files PREFIX.SRC/PREFIX.TGT with --objective.source_lang/--objective.target_lang",
        "qa": "extractive question answering (an encoder) from SQuAD JSON or JSONL context/"
        "question/answers records, long contexts in overlapping windows (--objective.stride)",
    }
    for task, text in helps.items():
        t = tsub.add_parser(
            task,
            parents=[_COMMON],
            help=text,
            description=f"{text}. Starts from fine-tuning defaults (lower learning rate, short "
            "warm-up, weight decay, dropout, early stopping on the validation metric); any field "
            "can be overridden with --section.key=value; --print-config shows them all.",
        )
        t.add_argument(
            "--init",
            required=True,
            help="checkpoint, run directory or Hugging Face directory (train.init)",
        )
        t.add_argument(
            "--train", help="training records (data.train_file; or set in the --config recipe)"
        )
        t.add_argument(
            "--val",
            help="validation records (data.val_file); default: a share of --train held out "
            "(stratified by label for classify, whole articles for qa)",
        )
        t.add_argument("--out", help="run directory (train.out_dir)")
        t.add_argument(
            "--method",
            choices=["full", "freeze", "lora"],
            help="what trains (adapt.method, default full)",
        )
        t.add_argument("--config", type=Path, help="YAML recipe (see configs/finetune/)")
        _add_shared(t, "--resume", "--print-config")
        t.add_argument(
            "--skip-invalid",
            action="store_true",
            help="skip and count bad records instead of stopping at the first (data.skip_invalid)",
        )
        if task == "classify":
            t.add_argument("--text-field", help="text column (data.text_field, default text)")
            t.add_argument("--label-field", help="label column (data.label_field, default label)")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", parents=[_COMMON], help="Generate text from a checkpoint.")
    p.add_argument("checkpoint", type=Path, help="checkpoint directory or run directory")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    # None, not 0.8, so that --beams can tell a temperature that was asked for.
    p.add_argument("--temperature", type=float, help=_TEMPERATURE_HELP)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--beams",
        type=int,
        help="beam search with N beams instead of sampling: the continuation with the best "
        "length-normalised log-probability (no --temperature > 0, --top-k, --top-p or --seed)",
    )
    p.add_argument(
        "--length-penalty",
        type=float,
        help="with --beams: scores are summed log-probability / length ** X; above 1 favours "
        "longer outputs, below it shorter ones (default: 1.0)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence every step (slow; for checking)",
    )
    p.add_argument("--device", default="cpu")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        parents=[_COMMON],
        help="Export a checkpoint to Hugging Face (hf) or llama.cpp (gguf).",
        description="--format hf writes a Hugging Face transformers directory (config.json, "
        "model.safetensors, tokenizer files, generation_config.json, a model card README.md): "
        "GPT-2 style as GPT2LMHeadModel, Llama style as LlamaForCausalLM or Qwen2ForCausalLM. "
        "--format gguf writes one llama.cpp file for Llama-style models. A config the target "
        "cannot represent is refused before anything is written.",
    )
    _add_shared(p, "checkpoint")
    p.add_argument(
        "--format",
        choices=["hf", "gguf"],
        default="hf",
        help="hf: a Hugging Face transformers directory; gguf: one llama.cpp file "
        "(Llama-style models)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="hf: directory to write (must not exist or be empty); gguf: the .gguf file "
        "(must not exist); --overwrite replaces either",
    )
    p.add_argument(
        "--dtype",
        choices=["f32", "f16", "q8_0"],
        default=None,
        help="gguf tensor type (default: f16); --format gguf only",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (hf: a folder; gguf: a file)",
    )
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="fold a LoRA fine-tune's adapter into the weights before exporting",
    )
    p.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reload the export (in transformers when installed) and check logits, tokenizer "
        "ids, eos ids and vocabulary size against the checkpoint (default: on)",
    )


def _add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="Run a comparison experiment.")
    esub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = esub.add_parser(
        "objectives",
        parents=[_COMMON],
        help="Pre-train one small model per objective and compare them with a linear probe.",
        description="Pre-trains the same model size with each objective on the same data for the "
        "same number of tokens, probes each frozen model on a labelled set, and writes report.md, "
        "results.json and comparison.png into --out. Further --section.key=value overrides apply "
        "to every arm.",
    )
    e.add_argument(
        "--data", type=Path, required=True, help="prepared data directory (from graft data prepare)"
    )
    e.add_argument(
        "--labelled",
        type=Path,
        required=True,
        help="labelled file for the probe (.jsonl, .json, .csv, .tsv or label<TAB>text)",
    )
    _add_shared(e, "--text-field", "--label-field")
    e.add_argument("--encoding", help="encoding of --labelled (default: utf-8)")
    e.add_argument("--objectives", help="comma list (default: clm,mlm,mlm+nsp,denoise,mix)")
    e.add_argument("--preset", help="decoder size; encoder arms use bert-<size> (default: micro)")
    e.add_argument("--max-tokens", type=int, required=True, help="training tokens per arm")
    e.add_argument("--seq-len", type=int, help="training context and probe length (default: 128)")
    e.add_argument("--batch-size", type=int, help="sequences per step (default: 16)")
    e.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3)")
    e.add_argument(
        "--seed", type=int, help="seed for every arm and the probe split (default: 1337)"
    )
    e.add_argument(
        "--probe-examples", type=int, help="stratified subsample of --labelled (default: 2000)"
    )
    e.add_argument(
        "--probe-test-fraction",
        type=float,
        help="held-out share of the probe examples (default: 0.3)",
    )
    e.add_argument("--out", type=Path, required=True, help="directory for the report and the runs")
    e.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted comparison in --out, keeping its finished arms",
    )
    _add_shared(e, "--no-progress")
    _add_experiment_transfer(esub)


def _add_experiment_transfer(esub: argparse._SubParsersAction) -> None:
    t = esub.add_parser(
        "transfer",
        parents=[_COMMON],
        help="Fine-tune from scratch, fully, with LoRA and as a linear probe at several "
        "labelled-set sizes and seeds; report means and 95%% CIs.",
        description="Splits one labelled set once (test, validation, training pool), then "
        "fine-tunes every arm (scratch, full, lora, probe, and continued with --continued) at "
        "every size with every seed under the same budget, scores each best checkpoint on the "
        "test set, and writes report.md, results.json and learning_curve.png into --out. Further "
        "--section.key=value overrides apply to every run; --ARM:section.key=value to one arm's "
        "runs (e.g. --lora:optim.lr=2e-3).",
    )
    t.add_argument(
        "--init",
        type=Path,
        required=True,
        help="the pre-trained checkpoint (or run or Hugging Face directory)",
    )
    t.add_argument(
        "--continued", type=Path, help="a continued-pre-trained checkpoint: adds the continued arm"
    )
    t.add_argument(
        "--labelled",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="a labelled file (.jsonl, .json, .csv, .tsv or label<TAB>text), or the pos and neg "
        "polarity files",
    )
    _add_shared(t, "--text-field", "--label-field")
    t.add_argument(
        "--encoding", help="encoding of --labelled (default: utf-8; latin-1 for a polarity pair)"
    )
    t.add_argument(
        "--arms",
        help="comma list (default: scratch,full,lora,probe, and continued with --continued)",
    )
    t.add_argument(
        "--sizes",
        help="labelled training examples per run, comma list with 'all' (default: 50,200,1000,all)",
    )
    t.add_argument("--seeds", type=int, help="seeds per arm and size: 0..N-1 (default: 3)")
    t.add_argument("--test-fraction", type=float, help="held-out test share (default: 0.2)")
    t.add_argument(
        "--val-size", type=int, help="validation texts for early stopping (default: 200)"
    )
    t.add_argument(
        "--max-steps", type=int, help="steps per run, the same for every arm (default: 500)"
    )
    t.add_argument(
        "--max-minutes", type=float, help="minutes per run, the same for every arm (default: none)"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="finish an interrupted experiment in --out, keeping its runs; it may add --seeds, "
        "--sizes or --arms",
    )
    t.add_argument(
        "--out", type=Path, required=True, help="directory for the report, the split and the runs"
    )
    _add_shared(t, "--no-progress")


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="Audit what a fine-tuning run leaks about its records.")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = asub.add_parser(
        "canaries",
        parents=[_COMMON],
        help="Insert secret canaries, fine-tune, and measure their exposure and a one-run "
        "epsilon lower bound.",
        description="Writes an audited training file into --out: the records of --data as "
        "one-turn conversations (a labelled text becomes the reply to a fixed instruction, since "
        "exposure needs a generative model; conversation files are kept as they are), plus "
        "--canaries random secrets each inserted --repeats times, --controls never inserted, and "
        "--members membership canaries each inserted with probability 1/2. The validation split "
        "is held out first and holds no canary. Fine-tunes --init with objective instruct once "
        "without DP and, when the overrides turn DP on (--dp.epsilon=8), once with it; other "
        "--section.key=value overrides apply to both runs. Scores each run's last checkpoint: "
        "per-canary exposure (Carlini et al. 2019, sampled and skew-normal extrapolated) and the "
        "one-run epsilon lower bound (Steinke, Nasr and Jagielski 2023), beside the accountant's "
        "epsilon; writes report.json and report.md.",
    )
    a.add_argument(
        "--init",
        type=Path,
        required=True,
        help="the base checkpoint (or run or Hugging Face directory; a decoder)",
    )
    a.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labelled records (.jsonl, .json, .csv, .tsv or label<TAB>text) or conversations "
        "(.jsonl/.json, Alpaca or chat messages)",
    )
    a.add_argument(
        "--out", type=Path, required=True, help="directory for the data, runs and report"
    )
    a.add_argument("--canaries", type=int, help="inserted exposure canaries (default: 10)")
    a.add_argument("--repeats", type=int, help="times each canary is inserted (default: 10)")
    a.add_argument("--controls", type=int, help="exposure canaries never inserted (default: 10)")
    a.add_argument(
        "--members",
        type=int,
        help="membership canaries, each in with probability 1/2 (default: 200)",
    )
    a.add_argument(
        "--samples",
        type=int,
        help="candidate secrets each canary is ranked against (default: 2000)",
    )
    a.add_argument("--digits", type=int, help="digits of a secret: |R| = 10^digits (default: 6)")
    a.add_argument("--seed", type=int, help="seed of the canaries and the splits (default: 0)")
    a.add_argument(
        "--beta", type=float, help="the one-run bound holds at confidence 1 - beta (default: 0.05)"
    )
    a.add_argument(
        "--instruction", help="the user turn of every record (default: 'Write a text message.')"
    )
    _add_shared(a, "--text-field", "--label-field", "--no-progress")
    a.add_argument("--encoding", help="encoding of --data (default: utf-8)")


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        parents=[_COMMON],
        help="Extract named entities from documents with a token-classification checkpoint.",
        description="Splits each document into words with their character offsets (brackets, "
        "quotes, most punctuation and clitics split off; abbreviations keep their period), "
        "tags them through the same path `graft finetune tokens` trained on and `graft eval "
        "--task tokens` scores, and writes one JSON line per entity: text, label, start, end "
        "(character offsets), doc (its location), source, doc_sha256 and score (mean probability "
        "of its tags). A document longer than the context is read in windows of whole sentences.",
    )
    _add_shared(p, "checkpoint")
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
    _add_shared(p, "--device", "--no-progress")


def _run_extract(args: argparse.Namespace) -> int:
    from graft.evaluate.extract import ExtractOptions, extract_entities

    options = _options(ExtractOptions, args, docs=tuple(args.docs), progress=not args.no_progress)
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


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        parents=[_COMMON],
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
    _add_shared(p, "checkpoint")
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
    _add_shared(p, "--device")


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        parents=[_COMMON],
        help="Serve a checkpoint over an OpenAI-compatible HTTP API, with a playground page.",
        description="Endpoints: /v1/models, /v1/completions, /v1/chat/completions (streaming as "
        "server-sent events), /v1/embeddings, /v1/classify (classifier checkpoints), /v1/qa "
        "(question-answering checkpoints), /v1/attention (attention maps), /health, /metrics "
        "(Prometheus), /openapi.json; the playground at /. Requests are decoded together "
        "(continuous batching). Binds 127.0.0.1 unless --host says otherwise.",
    )
    _add_shared(p, "checkpoint")
    p.add_argument("--host", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default: 8000; 0 picks a free one)")
    p.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $GRAFT_API_KEY, "
        "else none)",
    )
    p.add_argument(
        "--model-name", help="the model id clients use (default: the checkpoint path as given)"
    )
    p.add_argument("--max-batch", type=int, help="requests decoded together (default: 8)")
    p.add_argument(
        "--max-queue",
        type=int,
        help="requests waiting for a slot before new ones get 429 (default: 64)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        help="cap on prompt + new tokens over the running batch (default: max-batch full contexts)",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        help="int8: dynamic int8 linear layers on CPU (default: none)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the decode step: faster decoding after a start-up compile of 10-30 s "
        "on a CPU",
    )
    _add_shared(p, "--device")


def _add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        parents=[_COMMON],
        help="Chat with a checkpoint in the terminal.",
        description="Each line is a user turn; replies stream as they are written and the "
        "conversation is kept (oldest turns dropped when it outgrows the context). /reset clears "
        "it; /exit or end of input (Ctrl-D) leaves; Ctrl-C stops a reply.",
    )
    _add_shared(p, "checkpoint")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, help=_TEMPERATURE_HELP)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument(
        "--max-tokens", type=int, help="longest reply (default: the rest of the context)"
    )
    p.add_argument("--seed", type=int)
    _add_shared(p, "--device")


def _add_runs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="Look at training runs side by side.")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = rsub.add_parser(
        "compare",
        parents=[_COMMON],
        help="Compare runs on one self-contained HTML page.",
        description="Overlays the runs' training and validation loss, learning rate, throughput "
        "and validation-metric curves (inline SVG: the page needs no network), lists the "
        "resolved-config keys whose values differ, and their final metrics. A run without metrics "
        "or config, or a metric another objective does not log, is left out with a note.",
    )
    c.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories")
    c.add_argument("--out", type=Path, required=True, help="HTML file to write")


def _run_runs(args: argparse.Namespace) -> int:
    from graft.insight.compare import compare_runs

    comparison = compare_runs(args.runs, args.out)
    for note in comparison.notes:
        print(f"note: {note}")
    print(f"report: {comparison.out}")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        parents=[_COMMON],
        help="Explain how a checkpoint reads a text: PNGs and an HTML page.",
        description="Attention maps per layer and head, attention rollout, per-token loss "
        "(causal LMs), a logit lens (what each layer would predict) and, for sequence "
        "classifiers, integrated-gradients token attributions as coloured text. A text longer "
        "than the context is explained as far as it fits, with a note of what was left out. "
        "Writes index.html and its PNG files into --out (replaced whole).",
    )
    _add_shared(p, "checkpoint")
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
    _add_shared(p, "--device")


def _run_explain(args: argparse.Namespace) -> int:
    from graft.insight.explain import ExplainOptions, explain

    page, explanation = explain(_options(ExplainOptions, args))
    for note in explanation.notes:
        print(f"note: {note}")
    print(f"explained {len(explanation.ids)} tokens: {page}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as every other bad input is: the usage block it
    prints first pushes the one line that says what is wrong away from the prompt."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="graft", description="Transfer learning with transformer language models."
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks"
    )  # the default for _COMMON
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_quickstart,
        _add_tokenizer,
        _add_data,
        _add_pretrain,
        _add_finetune,
        _add_generate,
        _add_export,
        _add_experiment,
        _add_audit,
        _add_eval,
        _add_extract,
        _add_serve,
        _add_chat,
        _add_runs,
        _add_explain,
    ):
        add(sub)
    return parser


def _split_overrides(extra: list[str]) -> list[str]:
    """`--a.b=1` and `--a.b 1` both become 'a.b=1'; anything else is an error."""
    overrides, i = [], 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise GraftError(
                f"unrecognised argument {item!r}; config overrides look like --train.max_steps=100"
            )
        if "=" in item:
            overrides.append(item[2:])
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            overrides.append(f"{item[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise GraftError(f"override {item} has no value; write {item}=VALUE")
    return overrides


def _run_quickstart(args: argparse.Namespace) -> int:
    from graft.quickstart import QuickstartOptions, run_quickstart

    options = _options(
        QuickstartOptions,
        args,
        corpus_bytes=int(args.corpus_mb * 1e6),
        progress=not args.no_progress,
        finetune=not args.skip_finetune,
    )
    report = run_quickstart(options, echo=print)
    print(f"report: {report}")
    return 0


def _run_tokenizer(args: argparse.Namespace) -> int:
    from graft.data.documents import iter_documents
    from graft.data.tokenizer import bytes_tokenizer, train_tokenizer

    unused = {
        "bytes": {"the text files": args.inputs, "--vocab-size": args.vocab_size,
                  "--min-frequency": args.min_frequency},
        "unigram": {"--min-frequency": args.min_frequency},
    }.get(args.kind, {})  # fmt: skip
    given = [name for name, value in unused.items() if value not in (None, [])]
    if given:
        why = "nothing is trained" if args.kind == "bytes" else "it prunes by likelihood"
        raise GraftError(
            f"tokenizer train --kind {args.kind}: {why}, so {given[0]} would do nothing"
        )
    if args.out.is_dir():  # before the training, not after it
        from graft.checkpoint import refuse_writing_into  # torch: only when there is a folder

        refuse_writing_into(args.out, "--out")
    if args.kind == "bytes":
        tokenizer = bytes_tokenizer(sentinels=args.sentinels)
    else:
        if not args.inputs:
            raise GraftError(
                f"tokenizer train --kind {args.kind}: give the text files or folders to train on"
            )
        texts = (doc.read() for doc in iter_documents(args.inputs))
        tokenizer = train_tokenizer(
            texts,
            args.kind,
            8192 if args.vocab_size is None else args.vocab_size,
            min_frequency=2 if args.min_frequency is None else args.min_frequency,
            # The library's bars leave blank lines on a stdout that is not a terminal.
            show_progress=sys.stdout.isatty(),
            sentinels=args.sentinels,
        )
    path = tokenizer.save(args.out)
    print(f"{args.kind} tokenizer, {tokenizer.vocab_size} tokens: {path}")
    return 0


_DATA_ACTIONS = {
    "collect": _run_data_collect,
    "clean": _run_data_clean,
    "dedup": _run_data_clean,
    "redact": _run_data_clean,
    "get": _run_data_get,
    "report": _run_data_report,
}


def _run_data(args: argparse.Namespace) -> int:
    if args.action in _DATA_ACTIONS:
        return _DATA_ACTIONS[args.action](args)
    if args.action == "recipe":
        from graft.data.recipes import run_recipe

        documents, chars = run_recipe(args.name, args.sources, args.out)
        print(f"{args.name}: {documents:,} documents, {chars:,} characters: {args.out}")
        return 0
    from graft.data.redact import RedactConfig
    from graft.data.shards import prepare_shards
    from graft.data.tokenizer import Tokenizer, bytes_tokenizer

    redact = RedactConfig.from_options(
        args.redact, names_file=args.redact_names, mode=args.redact_mode, seed=args.redact_seed
    )

    tokenizer = (
        bytes_tokenizer() if args.tokenizer == "bytes" else Tokenizer.load(Path(args.tokenizer))
    )
    index = prepare_shards(
        args.inputs,
        tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.no_progress,
        val_inputs=args.val,
        split_on=args.split_on,
        redact=redact,
    )
    for name, split in index.splits.items():
        print(
            f"{name}: {split.tokens:,} tokens from {split.documents:,} documents "
            f"({split.bytes:,} bytes)"
        )
    if index.redaction is not None:
        counts = ", ".join(f"{kind} {n:,}" for kind, n in index.redaction["counts"].items())
        print(f"redacted ({index.redaction['mode']}): {counts}")
    print(f"prepared: {args.out}")
    return 0


def _given(shortcuts: dict[str, object]) -> list[str]:
    """`key=value` overrides for the shortcut flags that were given."""
    return [f"{key}={value}" for key, value in shortcuts.items() if value is not None]


def interrupted_line(step: int, run_dir: Path) -> str:
    """What an interrupted run says: where it resumes from, or that it has nowhere to."""
    from graft.checkpoint import saved_checkpoint

    saved = saved_checkpoint(run_dir)
    if saved is None:
        return (
            f"interrupted at step {step}, before the first checkpoint: nothing to resume "
            "(rerunning starts from step 0)"
        )
    return (
        f"interrupted at step {step}; the last complete checkpoint, {saved}, is intact: "
        "continue with --resume"
    )


def _run_pretrain(args: argparse.Namespace, extra: list[str]) -> int:
    from graft.config import load_run_config

    shortcuts = {
        "objective.name": args.objective,
        "data.path": args.data,
        "train.init": args.init,
        "data.replay_path": args.replay,
        "data.replay_fraction": args.replay_fraction,
        "train.out_dir": args.out,
    }
    return _train(args, load_run_config(args.config, _given(shortcuts) + _split_overrides(extra)))


def _run_finetune(args: argparse.Namespace, extra: list[str]) -> int:
    from graft.config import load_finetune_config

    shortcuts = {
        "train.init": args.init,
        "data.train_file": args.train,
        "data.val_file": args.val,
        "train.out_dir": args.out,
        "adapt.method": args.method,
        "data.text_field": getattr(args, "text_field", None),
        "data.label_field": getattr(args, "label_field", None),
        "data.skip_invalid": "true" if args.skip_invalid else None,
    }
    overrides = _given(shortcuts) + _split_overrides(extra)
    return _train(args, load_finetune_config(args.task, args.config, overrides))


def _train(args: argparse.Namespace, config: RunConfig) -> int:
    """Resolve, then print the config (--print-config) or run it: pre-training or fine-tuning,
    by the command."""
    # torch loads only once the config is known to be good
    from graft.checkpoint import resolve
    from graft.distributed import step_layout, world_from_env

    config = resolve(config, resume=args.resume)  # with --init or --resume: the checkpoint's model
    # grad_accum from train.global_batch and the number of processes (torchrun's)
    config = config.model_copy(update={"train": step_layout(config.train, world_from_env())})
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    if args.command == "pretrain":
        from graft.train.pretrain import pretrain

        result = pretrain(config, resume=args.resume)
    else:
        from graft.train.finetune import finetune

        result = finetune(config, resume=args.resume, echo=print)
    interrupted = result.stop_reason == "interrupted"
    if not world_from_env().is_main:  # rank 0 reports for every process
        return EXIT_INTERRUPTED if interrupted else 0
    if result.already_finished:
        limit = f"train.{result.stop_reason}"
        print(
            f"{result.run_dir} had already finished at step {result.step} ({limit} reached); "
            f"nothing was done. To train further, raise {limit} and --resume"
        )
        return 0
    if interrupted:
        print(interrupted_line(result.step, result.run_dir), file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.epsilon is not None:
        print(
            f"privacy spent: epsilon {result.epsilon:.3f} at delta {config.dp.delta:g} "
            f"({config.dp.accountant} accountant; the unit is one training record)"
        )
    if args.command == "pretrain":
        last = result.evals[-1] if result.evals else {}
        summary = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "step")
        print(
            f"stopped ({result.stop_reason}) at step {result.step}, "
            f"{result.tokens_seen:,} tokens, {result.elapsed_s:.0f} s. {summary}"
        )
        print(f"run: {result.run_dir}")
        return 0
    print(
        f"stopped ({result.stop_reason}) at step {result.step}, {result.elapsed_s:.0f} s; "
        f"best {config.train.monitor} {result.best_metric:.4f}"
        if result.best_metric is not None
        else f"stopped ({result.stop_reason})"
    )
    from graft.run_files import CHECKPOINTS_DIR

    best = result.run_dir / CHECKPOINTS_DIR / "best"
    print(f"run: {result.run_dir}  (best checkpoint: {best})")
    return 0


def _generate_params(args: argparse.Namespace) -> SamplingParams | BeamParams:
    """Beam search with --beams, else sampling, with no stop ids yet; refuses the flags that only
    the other one reads."""
    from graft.errors import ConfigError
    from graft.infer.beam import BeamParams
    from graft.infer.sampling import DEFAULT_TEMPERATURE, SamplingParams

    if args.beams is None:
        if args.length_penalty is not None:
            raise ConfigError("--length-penalty scores beam search hypotheses: give --beams N too")
        temperature = DEFAULT_TEMPERATURE if args.temperature is None else args.temperature
        return SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
        )
    sampling = [
        flag
        for flag, given in (
            ("--temperature", args.temperature is not None and args.temperature > 0),
            ("--top-k", args.top_k is not None),
            ("--top-p", args.top_p is not None),
            ("--seed", args.seed is not None),
        )
        if given
    ]
    if sampling:
        raise ConfigError(
            f"--beams searches for the most likely text and draws nothing at random; leave out "
            f"{', '.join(sampling)}"
        )
    penalty = {} if args.length_penalty is None else {"length_penalty": args.length_penalty}
    return BeamParams(beams=args.beams, max_new_tokens=args.max_new_tokens, **penalty)


def _run_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from graft.checkpoint import load_model, model_source
    from graft.data.inputs import prompt_ids as text_prompt_ids
    from graft.device import resolve_device
    from graft.infer.beam import BeamParams, beam_search
    from graft.infer.generate import generate
    from graft.infer.stream import TextStream
    from graft.model.convert.hf import stop_ids

    try:
        params = _generate_params(args)
    except ValueError as err:
        raise GraftError(f"generate: {err}") from None
    model, tokenizer = load_model(
        args.checkpoint, device=resolve_device(args.device, what="--device")
    )
    if not model.config.can_generate:
        raise GraftError(
            f"generate: {args.checkpoint} is not a causal language model (head "
            f"{model.config.head}, {model.config.attention} attention); it cannot generate text"
        )
    # The tokenizer's end-of-text and an HF directory's generation_config eos ids, as `graft
    # serve` and transformers stop.
    stops = stop_ids(tokenizer, model_source(args.checkpoint))
    params = replace(params, stop_ids=stops)
    prompt_ids = text_prompt_ids(tokenizer, args.prompt or "")
    if prompt_ids is None:
        raise GraftError(
            f"generate: {args.checkpoint}'s tokenizer has no end-of-text token to start from; "
            "give --prompt"
        )
    context = model.config.max_seq_len
    if len(prompt_ids) >= context:
        raise GraftError(
            f"generate: the prompt is {len(prompt_ids)} tokens; the model's context is {context}"
        )
    sys.stdout.write(args.prompt)  # only once it is known to fit: a refusal prints nothing
    stream = TextStream(tokenizer, context=prompt_ids)
    tokens: Iterable[int]
    if isinstance(params, BeamParams):
        # The best hypothesis is known only at the end: it is printed at once, not streamed.
        tokens = beam_search(model, prompt_ids, params, use_cache=not args.no_cache).ids
    else:
        tokens = generate(model, prompt_ids, params, use_cache=not args.no_cache)
    for token in tokens:
        if token in stops:
            break
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from graft.adapt import has_lora, merge_lora
    from graft.checkpoint import load_model, resolve_checkpoint
    from graft.errors import ConfigError
    from graft.model.convert.hf import is_hf_directory
    from graft.model.convert.hf_export import export_hf
    from graft.model.convert.outputs import check_export_out

    gguf = args.format == "gguf"
    # --dtype defaults to None so that a --dtype given to --format hf is seen, not ignored.
    if args.dtype is not None and not gguf:
        raise ConfigError(
            f"--dtype {args.dtype} sets the tensor type of a --format gguf file only; "
            "a Hugging Face export keeps the checkpoint's tensors as they are (drop --dtype)"
        )
    # Where the export goes is checked before the model loads: a refusal costs nothing.
    check_export_out(args.out, folder=not gguf, overwrite=args.overwrite, source=args.checkpoint)
    model, tokenizer = load_model(args.checkpoint)
    if has_lora(model):
        if not args.merge_lora:
            raise GraftError(
                f"{args.checkpoint} holds a LoRA adapter over its base weights; pass --merge-lora "
                "to fold it into the weights (the adapter itself is in the checkpoint, in PEFT's "
                "format)"
            )
        merge_lora(model)
    elif args.merge_lora:
        raise ConfigError(
            f"{args.checkpoint}: holds no LoRA adapter, so --merge-lora has nothing to merge "
            "(drop it)"
        )
    if gguf:
        from graft.model.convert.gguf import GgufDtype, export_gguf, read_back_summary

        dtype: GgufDtype = args.dtype if args.dtype is not None else "f16"
        out = export_gguf(model, tokenizer, args.out, dtype=dtype, overwrite=args.overwrite)
        print(f"exported (gguf, {dtype}): {out}")
        if args.verify:
            print(read_back_summary(out, model))
        return 0
    source = None if is_hf_directory(args.checkpoint) else resolve_checkpoint(args.checkpoint)
    out = export_hf(model, args.out, tokenizer=tokenizer, source=source, overwrite=args.overwrite)
    print(f"exported ({args.format}): {out}")
    if args.verify:
        from graft.model.convert.verify import format_table, raise_on_failure, verify_hf_export

        records = verify_hf_export(out, model, tokenizer)
        print(format_table(records))
        raise_on_failure(records, out)
    return 0


def _options(cls: type[_Options], args: argparse.Namespace, **values: object) -> _Options:
    """`cls` from `values` and from the flags named as its fields (--out for out_dir). None is left
    out: flags left unset keep the dataclass's defaults, so every default lives in one place."""
    given = {
        f.name: getattr(args, "out" if f.name == "out_dir" else f.name, None) for f in fields(cls)
    }
    given.update(values)
    return cls(**{key: value for key, value in given.items() if value is not None})


def _comma_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(word.strip() for word in text.split(",") if word.strip())


def _run_experiment(args: argparse.Namespace, extra: list[str]) -> int:
    if args.action == "transfer":
        return _run_experiment_transfer(args, extra)
    from graft.experiments.objective_comparison import ComparisonOptions, compare_objectives

    options = _options(
        ComparisonOptions,
        args,
        objectives=_comma_list(args.objectives),
        overrides=tuple(_split_overrides(extra)),
        progress=not args.no_progress,
    )
    return _experiment_done(compare_objectives(options, echo=print))


def _run_experiment_transfer(args: argparse.Namespace, extra: list[str]) -> int:
    from graft.experiments.transfer import run_transfer
    from graft.experiments.transfer_options import TransferOptions, parse_sizes

    sizes = None if args.sizes is None else parse_sizes(args.sizes)
    if args.seeds is not None and args.seeds < 1:
        raise GraftError(
            f"--seeds {args.seeds}: give the number of seeds, 1 or more (3 for useful CIs)"
        )
    options = _options(
        TransferOptions,
        args,
        labelled=tuple(args.labelled),
        arms=_comma_list(args.arms),
        sizes=sizes,
        seeds=None if args.seeds is None else tuple(range(args.seeds)),
        overrides=tuple(_split_overrides(extra)),
        progress=not args.no_progress,
    )
    return _experiment_done(run_transfer(options, echo=print))


def _experiment_done(report: Path) -> int:
    """The report's path, and exit status 1 when a run failed: a script or CI job running an
    experiment must not take a table of failures for a result."""
    from graft.experiments.runner import failed_runs

    print(f"report: {report}")
    failed = failed_runs(report.parent)
    if failed:
        print(
            f"graft: {len(failed)} run(s) failed (the report says why): {', '.join(failed)}",
            file=sys.stderr,
        )
        return EXIT_RUNS_FAILED
    return 0


def _run_audit(args: argparse.Namespace, extra: list[str]) -> int:
    from graft.experiments.canaries import AuditOptions, run_canary_audit

    options = _options(
        AuditOptions,
        args,
        overrides=tuple(_split_overrides(extra)),
        progress=not args.no_progress,
    )
    report = run_canary_audit(options, echo=print)
    print(report.read_text(encoding="utf-8"), end="")
    print(f"report: {report}")
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint

    report = evaluate_checkpoint(_options(EvalOptions, args, data=tuple(args.data)), echo=print)
    print(report.with_suffix(".md").read_text(encoding="utf-8"), end="")
    print(f"report: {report}")
    return 0


def _run_serve(args: argparse.Namespace) -> int:
    from graft.serve.app import ServeOptions, serve

    api_key = args.api_key if args.api_key is not None else os.environ.get("GRAFT_API_KEY") or None
    # Flushed at once: the address line is what a supervisor or a log reader waits for.
    serve(_options(ServeOptions, args, api_key=api_key), echo=lambda line: print(line, flush=True))
    return 0


def _run_chat(args: argparse.Namespace) -> int:
    from graft.terminal_chat import ChatOptions, run_chat

    run_chat(_options(ChatOptions, args))
    return 0


# The commands that take --section.key=value overrides besides their own flags.
_WITH_OVERRIDES: dict[str, Callable[[argparse.Namespace, list[str]], int]] = {
    "pretrain": _run_pretrain,
    "finetune": _run_finetune,
    "experiment": _run_experiment,
    "audit": _run_audit,
}
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "quickstart": _run_quickstart,
    "tokenizer": _run_tokenizer,
    "data": _run_data,
    "generate": _run_generate,
    "export": _run_export,
    "eval": _run_eval,
    "extract": _run_extract,
    "serve": _run_serve,
    "chat": _run_chat,
    "runs": _run_runs,
    "explain": _run_explain,
}


# Commands that plan and run their own trainings, one after another, in one process: under
# torchrun every rank would run the whole plan and write the same files at once.
_ONE_PROCESS = ("quickstart", "experiment", "audit")


def _refuse_torchrun(command: str) -> None:
    from graft.distributed import world_from_env

    if world_from_env().size > 1:
        raise GraftError(
            f"graft {command} runs in one process (it runs its trainings one after another): "
            "launch it without torchrun"
        )


def _command_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (sub)command that was run, so that its error points to its own help
    (`graft tokenizer train --help`), which lists the flags, not `graft --help`."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or getattr(args, subs[0].dest, None) is None:
            return parser
        parser = subs[0].choices[getattr(args, subs[0].dest)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command in _ONE_PROCESS:
            _refuse_torchrun(args.command)
        if args.command in _WITH_OVERRIDES:
            return _WITH_OVERRIDES[args.command](args, extra)
        if extra:
            _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
        return _COMMANDS[args.command](args)
    except GraftError as err:
        if args.debug:
            traceback.print_exc()
        print(f"graft: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of a pipe stopped (`graft data collect ... --out - | head`): not an
        # error of ours. Later writes (Python's own flush at exit) go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        # A path the system refused (a file where a folder must be, no permission, a read-only
        # disk): the user's to fix, so one line naming it. An OSError without a path is a bug
        # of ours and keeps its traceback. A rename names its destination second.
        path = err.filename2 if err.filename2 is not None else err.filename
        if path is None:
            raise
        if args.debug:
            traceback.print_exc()
        shown = os.fsdecode(path) if isinstance(path, str | bytes) else str(path)
        print(f"graft: error: {shown}: {err.strerror or err}", file=sys.stderr)
        return EXIT_BAD_INPUT
