"""Does pre-training pay on question answering and translation? One pre-trained checkpoint
fine-tuned on a task against the same architecture from scratch (`--adapt.from_scratch=true`:
the same tokenizer, shapes and recipe, random weights), each scored on held-out data, in one run.

    qa         XQuAD English (../shared/data/squad/xquad.en.json, 48 articles, 1,190 questions),
               split by article: a seeded 10 articles are the test set, the rest train (the
               fine-tune holds whole articles of those out for validation, data.val_fraction).
               `graft finetune qa` with configs/finetune/qa-squad.yaml, then `graft eval --task
               qa` on the test articles: SQuAD exact match and F1 (official normalisation).
    translate  Multi30k English -> German (../shared/data/seq2seq/multi30k): `graft finetune
               seq2seq` on the 29,000 training pairs (validation: val), configs/finetune/
               seq2seq-translate-multi30k.yaml, then `graft eval --task generate` on
               test_2016_flickr, greedy and beam 4: sacrebleu corpus BLEU and chrF.

Both arms run the same number of steps (`--steps`), so the machine's load changes the minutes,
not the scores. Every command is printed before it runs; the table at the end is markdown.

    python bench/transfer_tasks.py qa --init runs/bert/checkpoints/last --out runs/qa_bench
    python bench/transfer_tasks.py translate --init runs/micro/checkpoints/last \\
        --out runs/mt_bench --steps 1500
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune"
TEST_ARTICLES = 10


def graft(*args: object) -> None:
    """Run one graft command, echoing it."""
    command = [sys.executable, "-m", "graft", *map(str, args)]
    print("$ graft " + shlex.join(command[3:]), flush=True)
    subprocess.run(command, check=True)


def split_xquad(out: Path, seed: int) -> tuple[Path, Path]:
    """XQuAD's articles in a seeded order: TEST_ARTICLES of them to test.json, the rest to
    train.json, both SQuAD v1.1 JSON."""
    squad = json.loads((DATA / "squad" / "xquad.en.json").read_text(encoding="utf-8"))
    articles = list(squad["data"])
    random.Random(seed).shuffle(articles)
    paths = []
    for name, part in (("train", articles[TEST_ARTICLES:]), ("test", articles[:TEST_ARTICLES])):
        path = out / f"xquad_{name}.json"
        path.write_text(json.dumps({"version": squad["version"], "data": part}), encoding="utf-8")
        questions = sum(len(p["qas"]) for a in part for p in a["paragraphs"])
        print(f"{path}: {len(part)} articles, {questions} questions")
        paths.append(path)
    return paths[0], paths[1]


def finetune(task: str, init: Path, run: Path, scratch: bool, extra: list[object]) -> float:
    """Fine-tune one arm (an arm whose run is there already is resumed: a finished run returns at
    once); the seconds of training its metrics record."""
    graft(
        "finetune",
        task,
        "--init",
        init,
        "--out",
        run,
        "--train.progress=false",
        f"--adapt.from_scratch={'true' if scratch else 'false'}",
        *extra,
        *(["--resume"] if (run / "checkpoints" / "last").is_dir() else []),
    )
    rows = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return max(json.loads(row).get("elapsed_s", 0.0) for row in rows)


def qa(args: argparse.Namespace) -> list[str]:
    train, test = split_xquad(args.out, args.seed)
    rows = ["| arm | exact match | F1 | fine-tuning minutes |", "|---|---:|---:|---:|"]
    for arm in ("pretrained", "scratch"):
        run = args.out / arm
        seconds = finetune(
            "qa",
            args.init,
            run,
            arm == "scratch",
            [
                "--config",
                CONFIGS / "qa-squad.yaml",
                "--train",
                train,
                f"--train.max_steps={args.steps}",
                f"--train.seq_len={args.seq_len}",
                f"--train.seed={args.seed}",
                # 800 questions: the loss turns up within an epoch as the model grows sure of
                # itself, long before its spans stop improving; follow the spans.
                "--train.monitor=val/span_exact",
            ],
        )
        graft("eval", run / "checkpoints" / "best", "--task", "qa", "--data", test)
        report = json.loads((run / "eval" / "qa.json").read_text())
        rows.append(
            f"| {arm} | {report['exact_match']:.1f} | {report['f1']:.1f} | {seconds / 60:.1f} |"
        )
    return rows


def translate(args: argparse.Namespace) -> list[str]:
    corpus = DATA / "seq2seq" / "multi30k"
    rows = [
        "| arm | decoding | BLEU | chrF | ended with eos | fine-tuning minutes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arm in ("pretrained", "scratch"):
        run = args.out / arm
        seconds = finetune(
            "seq2seq",
            args.init,
            run,
            arm == "scratch",
            [
                "--config",
                CONFIGS / "seq2seq-translate-multi30k.yaml",
                "--train",
                corpus / "train",
                "--val",
                corpus / "val",
                f"--train.max_steps={args.steps}",
                f"--train.seed={args.seed}",
            ],
        )
        for beams in (1, 4):
            out = run / f"eval_beam{beams}"
            graft(
                "eval",
                run / "checkpoints" / "best",
                "--task",
                "generate",
                "--data",
                corpus / "test_2016_flickr",
                "--source-lang",
                "en",
                "--target-lang",
                "de",
                "--max-new-tokens",
                64,
                "--out",
                out,
                *(["--beams", beams] if beams > 1 else []),
            )
            m = json.loads((out / "generate.json").read_text())
            decoding = "greedy" if beams == 1 else f"beam {beams}"
            rows.append(
                f"| {arm} | {decoding} | {m['bleu']:.2f} | {m['chrf']:.2f} | "
                f"{m['ended_with_eos']:.2f} | {seconds / 60:.1f} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["qa", "translate"])
    parser.add_argument("--init", type=Path, required=True, help="the pre-trained checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, help="fine-tuning steps per arm")
    parser.add_argument("--seq-len", type=int, default=256, help="qa: window length in tokens")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    args.steps = args.steps or (400 if args.task == "qa" else 1500)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = qa(args) if args.task == "qa" else translate(args)
    table = "\n".join(rows)
    (args.out / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
