"""Throughput of `graft data prepare` (graft.data.shards.prepare_shards), against the tokenizer's
own batch encoding of the same text in the same batches, measured in the same run.

Method. For each tokenizer (`bytes`, a saved tokenizer directory or file, or `bpe:N`: a byte-level
BPE of N tokens trained on the inputs first, untimed), each repeat runs three stages, each in a
fresh Python process so that its peak memory is its own:

    read      the documents of the inputs cut into pieces, as prepare reads them (no encoding)
    encode    `tokenizers`' Tokenizer.encode_batch_fast (encode_batch before tokenizers 0.21) on
              those pieces, held in memory beforehand and grouped in the batches prepare forms
              (graft.data.shards' piece size and batch limits): the ceiling prepare can reach
              while it hands all of its encoding to `tokenizers`
    prepare   prepare_shards on the inputs into a temporary folder, the library call the CLI
              makes: reading, encoding, writing train.bin / val.bin / index.json, fsyncs

MB/s is the inputs' size on disk (MB = 10^6 bytes) over the wall time of the stage alone
(interpreter start, imports and loading the tokenizer excluded); the ratio is prepare's median
over encode's. graft encodes a byte tokenizer's text without `tokenizers` (its ids are the UTF-8
bytes), so for `bytes` the ratio can exceed 1. Peak RSS is prepare's process peak (ru_maxrss),
with its resident size just before the call (interpreter, numpy, tokenizers, the tokenizer) in
brackets. Stages alternate within each repeat, so drift in the machine hits all of them; the
table gives the median and range over repeats. The children get the environment the script
started with (tokenizers can switch its parallelism off in a process forked after it was used, as
it is to train `bpe:N`), and the script reports how many cores other processes used meanwhile: on
a busy machine that, not graft, moves these figures.

    python bench/data_prepare.py --tokenizer bytes --tokenizer ../bench_runs/runs/books_tok
    python bench/data_prepare.py --inputs some/corpus --tokenizer bpe:8192 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from machine import (  # bench/machine.py: the bench scripts' own
    OtherLoad,
    cpu_name,
    peak_rss_mb,
    rss_mb,
    usable_cores,
)

from graft.data import shards
from graft.data.documents import iter_documents, list_input_files
from graft.data.tokenizer import Tokenizer, bytes_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUTS = ROOT.parent / "shared" / "data" / "books"
STAGES = ("read", "encode", "prepare")
# The environment as the script started, before any tokenizers call could change it.
ENVIRONMENT = dict(os.environ)


@dataclass
class Row:
    """One tokenizer's figures over the repeats."""

    tokenizer: str
    source_bytes: int
    tokens: int = 0  # prepare's, the EOT after each document included
    encode_tokens: int = 0  # the encode stage's, with no EOTs
    documents: int = 0
    mb_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    cpu_s: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    peak_rss_mb: float = 0.0  # the highest over prepare's runs
    base_rss_mb: float = 0.0  # prepare's process just before the call
    ratio: float = float("nan")  # prepare's median MB/s over encode's

    def median(self, stage: str) -> float:
        return statistics.median(self.mb_s[stage])


# ---------------------------------------------------------------------------------------------
# The stages, each run in a child process (`--child STAGE`).


def load_tokenizer(spec: str) -> Tokenizer:
    return bytes_tokenizer() if spec == "bytes" else Tokenizer.load(Path(spec))


def pieces_in_batches(inputs: list[Path]) -> list[list[str]]:
    """The inputs' pieces, grouped as prepare_shards groups them for one encode call: documents
    one after another, a batch ending before the piece that would take it past the character
    limit, or at the default batch_size of 64 pieces."""
    # The private limits are read from the module, so the bench follows them when they change.
    piece_bytes, batch_chars, batch_size = shards._PIECE_BYTES, shards._BATCH_CHARS, 64
    batches: list[list[str]] = [[]]
    chars = 0
    for doc in iter_documents(inputs):
        for piece in doc.pieces(piece_bytes):
            if batches[-1] and chars + len(piece) > batch_chars:
                batches.append([])
                chars = 0
            batches[-1].append(piece)
            chars += len(piece)
            if len(batches[-1]) >= batch_size:
                batches.append([])
                chars = 0
    return [batch for batch in batches if batch]


def run_stage(stage: str, tokenizer_spec: str, inputs: list[Path], out: Path) -> dict[str, Any]:
    tokenizer = load_tokenizer(tokenizer_spec)
    batches = pieces_in_batches(inputs) if stage == "encode" else []
    backend = tokenizer.backend
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    base = rss_mb()
    tokens = documents = 0
    wall, cpu = time.perf_counter(), time.process_time()
    if stage == "read":
        for doc in iter_documents(inputs):
            for _ in doc.pieces(shards._PIECE_BYTES):
                pass
    elif stage == "encode":
        for batch in batches:
            # Only the counts are read: reading ids as Python lists is prepare's own work.
            tokens += sum(len(encoding) for encoding in encode(batch, add_special_tokens=False))
    else:
        index = shards.prepare_shards(inputs, tokenizer, out, progress=False)
        tokens = sum(split.tokens for split in index.splits.values())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if stage == "encode":
        documents = sum(1 for _ in iter_documents(inputs))
    return {
        "wall": wall,
        "cpu": cpu,
        "tokens": tokens,
        "documents": documents,
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
    }


def child(stage: str, tokenizer_spec: str, inputs: list[Path], out: Path) -> dict[str, Any]:
    """Run `stage` in a fresh process and return what it measured."""
    command = [sys.executable, __file__, "--child", stage, "--tokenizer", tokenizer_spec]
    command += ["--out", str(out), "--inputs", *map(str, inputs)]
    done = subprocess.run(
        command, env=ENVIRONMENT, capture_output=True, text=True, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{stage} with {tokenizer_spec} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The parent: tokenizers, repeats, the table.


def resolve_tokenizer(spec: str, inputs: list[Path], work: Path) -> tuple[str, str]:
    """(name shown, spec a child loads): `bpe:N` is trained here and saved under `work`."""
    if not spec.startswith("bpe:"):
        return spec, spec
    vocab = int(spec.split(":", 1)[1])
    texts = (doc.read() for doc in iter_documents(inputs))
    trained = train_tokenizer(texts, "bpe", vocab)
    path = trained.save(work / f"bpe{vocab}").parent
    return f"{spec} (trained on the inputs)", str(path)


def markdown_table(rows: list[Row]) -> str:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"

    lines = [
        "| tokenizer | source MB | tokens | read MB/s | encode MB/s (ceiling) | prepare MB/s "
        "| prepare / encode | prepare CPU s | prepare peak RSS MB (before) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.tokenizer} | {r.source_bytes / 1e6:.1f} | {r.tokens:,} | {cell(r.mb_s['read'])} "
            f"| {cell(r.mb_s['encode'])} | {cell(r.mb_s['prepare'])} | {r.ratio:.2f}x "
            f"| {statistics.median(r.cpu_s['prepare']):.2f} "
            f"| {r.peak_rss_mb:.0f} ({r.base_rss_mb:.0f}) |"
        )
    return "\n".join(lines)


def machine_line() -> str:
    cores = usable_cores()
    parallel = ENVIRONMENT.get("TOKENIZERS_PARALLELISM", "unset")
    return (
        f"CPU: {cpu_name()}; {cores} cores usable; Python {sys.version.split()[0]}; "
        f"tokenizers {tokenizers.__version__}; numpy {np.__version__}; "
        f"TOKENIZERS_PARALLELISM={parallel}; RAYON_NUM_THREADS="
        f"{ENVIRONMENT.get('RAYON_NUM_THREADS', 'unset')}"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--inputs", nargs="+", type=Path, default=[DEFAULT_INPUTS], help="files or folders"
    )
    p.add_argument(
        "--tokenizer",
        action="append",
        dest="tokenizers",
        help="bytes, a tokenizer directory or file, or bpe:N (trained on the inputs, untimed); "
        "repeatable (default: bytes and bpe:8192)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of each stage per tokenizer")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse(argv)
    if args.child:
        result = run_stage(args.child, args.tokenizers[0], args.inputs, args.out)
        print(json.dumps(result))
        return []
    print(machine_line(), flush=True)
    source_bytes = sum(path.stat().st_size for path in list_input_files(args.inputs))
    work = Path(tempfile.mkdtemp(prefix="data_prepare_"))
    try:
        specs = args.tokenizers or ["bytes", "bpe:8192"]
        tokenizers_ = [resolve_tokenizer(spec, args.inputs, work) for spec in specs]
        print(
            f"inputs: {', '.join(map(str, args.inputs))} ({source_bytes / 1e6:.1f} MB); "
            f"piece {shards._PIECE_BYTES} bytes, batches of up to {shards._BATCH_CHARS} "
            f"characters; {args.repeats} repeats",
            flush=True,
        )
        rows = [Row(name, source_bytes) for name, _ in tokenizers_]
        load = OtherLoad()
        children_cpu = _children_cpu()
        for _ in range(args.repeats):
            for row, (_, spec) in zip(rows, tokenizers_, strict=True):
                for stage in STAGES:
                    out = work / "prepared"
                    result = child(stage, spec, args.inputs, out)
                    shutil.rmtree(out, ignore_errors=True)
                    row.mb_s[stage].append(source_bytes / 1e6 / result["wall"])
                    row.cpu_s[stage].append(result["cpu"])
                    if stage == "encode":
                        row.encode_tokens, row.documents = result["tokens"], result["documents"]
                    if stage == "prepare":
                        row.tokens = result["tokens"]
                        if result["peak_mb"] > row.peak_rss_mb:
                            row.peak_rss_mb, row.base_rss_mb = result["peak_mb"], result["base_mb"]
        # OtherLoad counts this process's children as other processes: take them back out.
        seconds = time.perf_counter() - load.wall
        other = max(load.cores() - (_children_cpu() - children_cpu) / seconds, 0.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        row.ratio = row.median("prepare") / row.median("encode")
    print(
        f"other processes used {other:.2f} CPU cores on average during the run "
        "(0: a quiet machine)\n"
    )
    for row in rows:
        # The ceiling is only one if it encodes what prepare encodes: the same ids, plus an EOT
        # after each document.
        if row.tokens != row.encode_tokens + row.documents:
            print(
                f"warning: {row.tokenizer}: prepare wrote {row.tokens:,} tokens, but encode gave "
                f"{row.encode_tokens:,} for {row.documents:,} documents"
            )
    print("MB/s: median [min–max] over repeats; tokens: prepare's, an EOT per document included\n")
    print(markdown_table(rows))
    if args.json:
        results = {
            "machine": machine_line(),
            "other_processes_cores": other,
            "rows": [asdict(row) for row in rows],
        }
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return rows


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


if __name__ == "__main__":
    main()
