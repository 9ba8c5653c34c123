"""Throughput and peak memory of the corpus steps `collect`, `clean` and `dedup`, one by one and
chained in one process, on a generated corpus, against plain JSONL reading and writing of the
same file, measured in the same run.

Method. A seeded corpus of `--docs` documents (200,000 by default) is generated into a JSONL
file, a line at a time (never all in memory): English-like prose of 80-200 words drawn from a
Zipf vocabulary whose most frequent words are real English function words and the rest made-up
words, in sentences and paragraphs, so that most documents pass the quality rules. Among them,
planted: exact duplicates of an earlier document (some with other spacing and case), near
duplicates (an earlier document with 2-4% of its words substituted, inserted or deleted), and
low-quality documents that a rule should drop (too short, hashtag runs, a line repeated,
mostly numbers). Then each of these runs in a fresh Python process, in turn, so that its peak
memory is its own:

    io        the reference: read the generated JSONL a line at a time, json.loads, json.dumps,
              write every line to a new file (no graft code)
    collect   graft.data.collect.collect_to on the generated file
    clean     CleanStage through graft.data.stages.run_stage on collect's output
    dedup     DedupStage through run_stage on clean's output
    chained   collect -> clean -> dedup -> CorpusWriter as generators in one process, on the
              generated file: what `graft data collect ... | clean | dedup` does without pipes

MB in is the size of the stage's input file on disk (MB = 10^6 bytes); seconds are the wall
time of the stage alone (interpreter start and imports excluded; starting the process pools
included); "x io" is the stage's MB/s over the io reference's. Peak RSS is the stage process's
own (VmHWM), with its resident size just before the stage (interpreter and imports) in
brackets; the process pools' workers (`--workers`, one a core by default) are separate
processes, and the largest worker's peak is shown apart. The Must-show is the chained run's
peak: under `--budget-mb` (500) for 200,000 documents. The script also reports how many cores
other processes used meanwhile: on a busy machine that, not graft, moves the MB/s figures.

    python bench/data_pipeline.py
    python bench/data_pipeline.py --docs 20000 --workers 2 --keep /tmp/pipeline
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from machine import (  # bench/machine.py: the bench scripts' own
    OtherLoad,
    cpu_name,
    peak_rss_mb,
    rss_mb,
    usable_cores,
)

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("io", "collect", "clean", "dedup", "chained")
# What each stage reads (a file the run writes) and writes.
FILES = {
    "io": ("raw.jsonl", "io.jsonl"),
    "collect": ("raw.jsonl", "collected.jsonl"),
    "clean": ("collected.jsonl", "cleaned.jsonl"),
    "dedup": ("cleaned.jsonl", "deduped.jsonl"),
    "chained": ("raw.jsonl", "chained.jsonl"),
}

# ---------------------------------------------------------------------------------------------
# The generated corpus.

# Real English function words: the most frequent words of the vocabulary, as in English text,
# so the stop-word rule passes and the Zipf head looks like prose.
FUNCTION_WORDS = (
    "the of and to a in is that it was for on with as be have by at this from or an but not "
    "are his they which had we you were her one all their there been has more when will would "
    "who so no if out up what about into than them can only other its some"
).split()
_ONSETS = "b c d f g h j k l m n p r s t v w z br cl dr fl gr pl pr sh st th tr".split()
_VOWELS = "a e i o u ai ea ee io ou".split()
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "nd", "st", "rt"]

PLANTED = {  # share of the documents of each planted kind; the rest are originals
    "exact": 0.02,
    "exact-variant": 0.01,
    "near": 0.03,
    "short": 0.01,
    "hashtags": 0.01,
    "repeated-line": 0.01,
    "numbers": 0.01,
}
LOW_QUALITY = ("short", "hashtags", "repeated-line", "numbers")


class Prose:
    """Seeded English-like prose: words from a Zipf vocabulary (function words first, then
    made-up words of 1-4 syllables), in capitalised sentences of 6-20 words and paragraphs of
    2-6 sentences."""

    def __init__(self, rng: random.Random, vocabulary: int = 30_000) -> None:
        self.rng = rng
        made_up: set[str] = set()
        while len(made_up) < vocabulary - len(FUNCTION_WORDS):
            syllables = rng.randint(1, 4)
            word = "".join(
                rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                for _ in range(syllables)
            )
            if word not in FUNCTION_WORDS:
                made_up.add(word)
        ordered = sorted(made_up)
        rng.shuffle(ordered)
        self.words = FUNCTION_WORDS + ordered
        self.cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(vocabulary)))

    def draw(self, count: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cumulative, k=count)

    def text(self, count: int) -> str:
        words, paragraphs, sentences = self.draw(count), [], []
        at = 0
        while at < len(words):
            size = self.rng.randint(6, 20)
            sentence = words[at : at + size]
            at += size
            if len(sentence) > 8 and self.rng.random() < 0.4:
                comma = self.rng.randint(3, len(sentence) - 3)
                sentence[comma] += ","
            end = self.rng.choices(".?!", weights=(0.9, 0.06, 0.04))[0]
            sentences.append(" ".join(sentence).capitalize() + end)
            if len(sentences) >= self.rng.randint(2, 6):
                paragraphs.append(" ".join(sentences))
                sentences = []
        if sentences:
            paragraphs.append(" ".join(sentences))
        return "\n\n".join(paragraphs)


def _edited(rng: random.Random, text: str, rate: float, pool: list[str]) -> str:
    """`text` with round(rate * words) word substitutions, insertions and deletions."""
    words = text.split(" ")
    for _ in range(max(1, round(rate * len(words)))):
        at = rng.randrange(len(words))
        edit = rng.choice("sid")
        if edit == "s":
            words[at] = rng.choice(pool)
        elif edit == "i":
            words.insert(at, rng.choice(pool))
        elif len(words) > 1:
            del words[at]
    return " ".join(words)


def _low_quality(prose: Prose, kind: str) -> str:
    rng = prose.rng
    if kind == "short":  # word_count
        return prose.text(rng.randint(8, 40))
    if kind == "hashtags":  # symbol_ratio: far more than one "#" in ten words
        words = prose.text(rng.randint(80, 150)).split(" ")
        return " ".join("#" + w if i % 3 == 0 else w for i, w in enumerate(words))
    if kind == "repeated-line":  # dup_lines
        line = prose.text(rng.randint(10, 15)).replace("\n", " ")
        return "\n".join([line] * rng.randint(8, 14))
    # numbers: alpha_words, most words without a letter
    cells = [f"{rng.randint(0, 99_999):,}" if rng.random() < 0.5 else f"{rng.random() * 100:.2f}"]
    cells += [str(rng.randint(0, 9999)) for _ in range(rng.randint(80, 150))]
    words = prose.draw(len(cells) // 6)
    return " ".join(cells[: len(cells) - len(words)] + words)


def documents(count: int, seed: int) -> Iterator[tuple[str, str]]:
    """(kind, text) for `count` documents; planted copies are of one of the last 5,000
    originals."""
    rng = random.Random(seed)
    prose = Prose(rng)
    recent: deque[str] = deque(maxlen=5000)
    kinds, shares = list(PLANTED), list(itertools.accumulate(PLANTED.values()))
    pool = prose.draw(2000)
    for _ in range(count):
        roll = rng.random()
        at = bisect.bisect_right(shares, roll)
        kind = kinds[at] if at < len(kinds) and recent else "original"
        if kind == "original":
            text = prose.text(rng.randint(80, 200))
            recent.append(text)
        elif kind == "exact":
            text = rng.choice(recent)
        elif kind == "exact-variant":  # the same once case and spacing are normalised
            text = rng.choice(recent).replace(". ", ".  ").replace("\n\n", "\n \n")
            text = text[0].lower() + text[1:] if rng.random() < 0.5 else text.upper()
        elif kind == "near":
            text = _edited(rng, rng.choice(recent), rng.uniform(0.02, 0.04), pool)
        else:
            text = _low_quality(prose, kind)
        yield kind, text


def generate(path: Path, count: int, seed: int) -> Counter[str]:
    """Write the corpus to `path` (JSONL: text, id, kind), a line at a time; the kinds' counts."""
    kinds: Counter[str] = Counter()
    with path.open("w", encoding="utf-8") as out:
        for number, (kind, text) in enumerate(documents(count, seed)):
            kinds[kind] += 1
            out.write(json.dumps({"text": text, "id": number, "kind": kind}) + "\n")
    return kinds


# ---------------------------------------------------------------------------------------------
# The stages, each run in a child process (`--child STAGE`).


def _children_peak_mb() -> float:
    """The largest peak resident set of this process's finished children (its pools' workers)."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def run_child(stage: str, source: Path, out: Path, workers: int) -> dict[str, Any]:
    """Run one stage here and return what it measured."""
    from graft.data.clean import CleanConfig, CleanStage
    from graft.data.collect import CollectOptions, collect, collect_to
    from graft.data.corpus import CorpusWriter, Problems, StageStats
    from graft.data.dedup import DedupConfig, DedupStage
    from graft.data.stages import run_stage, stats_record, summary_line

    pool = workers or None  # None: one a core, as the CLI's 0
    collect_options = CollectOptions(workers=workers)
    base = rss_mb()
    steps: list[StageStats] = []
    docs_in = docs_out = 0
    start = time.perf_counter()
    if stage == "io":
        with source.open(encoding="utf-8") as lines, out.open("w", encoding="utf-8") as sink:
            for line in lines:
                record = json.loads(line)
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                docs_in += 1
        docs_out = docs_in
    elif stage == "collect":
        steps.append(collect_to([source], out, collect_options, problems=Problems()))
    elif stage == "clean":
        steps.append(run_stage(CleanStage(CleanConfig(workers=pool)), [source], out))
    elif stage == "dedup":
        steps.append(run_stage(DedupStage(DedupConfig(workers=pool)), [source], out))
    else:  # chained
        problems = Problems()
        clean = CleanStage(CleanConfig(workers=pool))
        dedup = DedupStage(DedupConfig(workers=pool))
        docs = collect([source], problems=problems, options=collect_options)
        with CorpusWriter(out) as writer:
            for doc in dedup(clean(docs)):
                writer.write(doc)
        collected = StageStats("collect", docs_out=clean.stats.docs_in)
        collected.rejected.update(problems.counts)
        steps += [collected, clean.stats, dedup.stats]
    seconds = time.perf_counter() - start
    if steps:
        docs_in, docs_out = steps[0].docs_in or steps[0].docs_out, steps[-1].docs_out
    return {
        "seconds": seconds,
        "docs_in": docs_in,
        "docs_out": docs_out,
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
        "workers_peak_mb": _children_peak_mb(),
        "summaries": [summary_line(s) for s in steps if s.stage != "collect" or stage != "chained"],
        "steps": [stats_record(s) for s in steps],
    }


def child(stage: str, work: Path, workers: int) -> dict[str, Any]:
    """Run `stage` in a fresh process and return what it measured."""
    source, out = (work / name for name in FILES[stage])
    command = [sys.executable, __file__, "--child", stage, "--workers", str(workers)]
    command += ["--keep", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["mb_in"] = source.stat().st_size / 1e6
    result["mb_out"] = out.stat().st_size / 1e6
    return result


# ---------------------------------------------------------------------------------------------
# The parent: the corpus, the stages in turn, the table.


@dataclass
class Row:
    stage: str
    docs_in: int
    docs_out: int
    mb_in: float
    seconds: float
    peak_mb: float
    base_mb: float
    workers_peak_mb: float
    ratio: float = float("nan")  # MB/s over the io reference's

    @property
    def mb_s(self) -> float:
        return self.mb_in / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Report:
    rows: list[Row]
    table: str
    machine: str
    planted: dict[str, int]
    other_cores: float
    budget_mb: float
    within_budget: bool
    same_output: bool  # the chained run wrote what collect, clean and dedup wrote one by one
    summaries: dict[str, list[str]] = field(default_factory=dict)
    steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def machine_line() -> str:
    import numpy as np

    cores = usable_cores()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"CPU: {cpu_name()}; {cores} cores usable; Python {sys.version.split()[0]}; "
        f"numpy {np.__version__}; load average now {load}"
    )


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| stage | docs in | docs out | MB in | s | MB/s | x io | peak RSS MB (before) "
        "| workers' peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        workers = f"{r.workers_peak_mb:.0f}" if r.workers_peak_mb > 0 else "-"
        lines.append(
            f"| {r.stage} | {r.docs_in:,} | {r.docs_out:,} | {r.mb_in:.1f} | {r.seconds:.1f} "
            f"| {r.mb_s:.2f} | {r.ratio:.3f} | {r.peak_mb:.0f} ({r.base_mb:.0f}) | {workers} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=200_000, help="documents to generate (200000)")
    p.add_argument("--workers", type=int, default=0, help="pool processes a stage (0: a core)")
    p.add_argument("--keep", type=Path, help="write (and keep) the corpus and outputs here")
    p.add_argument("--seed", type=int, default=0, help="of the generated corpus (default 0)")
    p.add_argument("--budget-mb", type=float, default=500.0, help="the chained run's peak RSS")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.docs < 1 or args.workers < 0:
        p.error("--docs must be positive and --workers 0 or more")
    return args


def main(argv: list[str] | None = None) -> Report | None:
    args = parse(argv)
    if args.child:
        source, out = (args.keep / name for name in FILES[args.child])
        print(json.dumps(run_child(args.child, source, out, args.workers)))
        return None
    machine = machine_line()
    print(machine, flush=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="data_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        planted = generate(work / "raw.jsonl", args.docs, args.seed)
        size = (work / "raw.jsonl").stat().st_size / 1e6
        shown = ", ".join(f"{n:,} {kind}" for kind, n in planted.most_common())
        print(
            f"generated {args.docs:,} documents ({size:.1f} MB) in "
            f"{time.perf_counter() - start:.1f} s: {shown}",
            flush=True,
        )
        load = OtherLoad()
        children_cpu = _children_cpu()
        results = {}
        for stage in STAGES:
            results[stage] = child(stage, work, args.workers)
            r = results[stage]
            print(
                f"  {stage}: {r['docs_in']:,} -> {r['docs_out']:,} docs in {r['seconds']:.1f} s, "
                f"peak RSS {r['peak_mb']:.0f} MB",
                flush=True,
            )
        seconds = time.perf_counter() - load.wall
        # OtherLoad counts this process's children as other processes: take them back out.
        other = max(load.cores() - (_children_cpu() - children_cpu) / seconds, 0.0)
        same = _same_lines(work / "deduped.jsonl", work / "chained.jsonl")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = [
        Row(
            stage,
            r["docs_in"],
            r["docs_out"],
            r["mb_in"],
            r["seconds"],
            r["peak_mb"],
            r["base_mb"],
            r["workers_peak_mb"],
        )
        for stage, r in results.items()
    ]
    reference = rows[0].mb_s
    for row in rows:
        row.ratio = row.mb_s / reference
    table = markdown_table(rows)
    chained = rows[-1]
    within = chained.peak_mb < args.budget_mb
    print(
        f"\nother processes used {other:.2f} CPU cores on average during the stages "
        f"(0: a quiet machine); workers {args.workers or os.cpu_count()} a pool\n"
    )
    print(table)
    print()
    for stage in ("clean", "dedup", "chained"):
        for line in results[stage]["summaries"]:
            print(f"{stage}: {line}" if stage == "chained" else line)
    dedup_notes = results["dedup"]["steps"][-1]["notes"]
    print(f"dedup index: {dedup_notes.get('index_mb')} MB of arrays, LSH {dedup_notes.get('lsh')}")
    expected_low = sum(planted[k] for k in LOW_QUALITY)
    expected_dups = planted["exact"] + planted["exact-variant"] + planted["near"]
    print(
        f"planted: {expected_low:,} low-quality, {expected_dups:,} duplicates "
        f"({planted['exact'] + planted['exact-variant']:,} exact, {planted['near']:,} near)"
    )
    print(
        f"\nMust-show: chained collect+clean+dedup peak RSS {chained.peak_mb:.0f} MB "
        f"{'<' if within else '>='} {args.budget_mb:.0f} MB for {chained.docs_in:,} documents: "
        f"{'yes' if within else 'NO'}; its output is "
        f"{'the same as' if same else 'NOT the same as'} the separate stages'"
    )
    report = Report(
        rows,
        table,
        machine,
        dict(planted),
        other,
        args.budget_mb,
        within,
        same,
        summaries={s: results[s]["summaries"] for s in results},
        steps={s: results[s]["steps"] for s in results},
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**asdict(report), "rows": [asdict(r) for r in rows]}, f, indent=2)
    return report


def _same_lines(a: Path, b: Path) -> bool:
    with a.open(encoding="utf-8") as one, b.open(encoding="utf-8") as other:
        return all(x == y for x, y in itertools.zip_longest(one, other))


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


if __name__ == "__main__":
    report = main()
    sys.exit(0 if report is None or report.within_budget else 1)
