"""`graft tokenizer` and `graft data`: train a tokenizer; prepare token shards; collect, clean,
deduplicate, redact, fetch and describe corpora. Each parser sits beside its runner."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from graft.cli.common import COMMON, add_shared
from graft.errors import GraftError


def add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="Train a tokenizer.")
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    t = tsub.add_parser(
        "train",
        parents=[COMMON],
        help="Train BPE (default), WordPiece or Unigram on text; or write the bytes tokenizer.",
    )
    t.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help=".txt/.md/.jsonl/.jsonl.zst files or folders (not needed for --kind bytes)",
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


def run_tokenizer(args: argparse.Namespace) -> int:
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


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="Prepare token shards from text.")
    dsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = dsub.add_parser(
        "prepare",
        parents=[COMMON],
        help="Tokenize .txt/.md/.jsonl/.jsonl.zst inputs into train/val token shards.",
    )
    d.add_argument("inputs", nargs="+", type=Path, help="files or folders")
    d.add_argument(
        "--tokenizer", required=True, help="tokenizer.json, a directory holding one, or 'bytes'"
    )
    d.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    d.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="share of the tokens held out for val (default 0.1): whole documents, by a seeded "
        "coin; with fewer documents than 1/FRACTION, the last FRACTION of each document",
    )
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
# registered in add_data and _DATA_ACTIONS.
def _add_data_collect(dsub: argparse._SubParsersAction) -> None:
    c = dsub.add_parser(
        "collect",
        parents=[COMMON],
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
    add_shared(c, "--no-progress")


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
        p = dsub.add_parser(name, parents=[COMMON], help=help, description=description)
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
        add_shared(p, "--no-progress")
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
        parents=[COMMON],
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
        parents=[COMMON],
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
        parents=[COMMON],
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


_DATA_ACTIONS = {
    "collect": _run_data_collect,
    "clean": _run_data_clean,
    "dedup": _run_data_clean,
    "redact": _run_data_clean,
    "get": _run_data_get,
    "report": _run_data_report,
}


def run_data(args: argparse.Namespace) -> int:
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
