"""Smoke tests of the inference and fine-tuning benches: each runs end to end at a tiny size and
prints its table. No timing is asserted (benchmarks are scripts; docs/benchmarks.md has figures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_decode_speed_compares_with_transformers_and_agrees_on_tokens() -> None:
    import transformers  # noqa: F401 - the bench needs it: fail, do not skip, without it

    out = run(
        "decode_speed.py",
        "--presets",
        "llama-micro",
        "--vocab",
        "512",
        "--new-tokens",
        "8",
        "--repeats",
        "1",
        "--batches",
        "1",
        "2",
        "--skip-compile",
        "--threads",
        "1",
    )
    assert "hf generate" in out and "graft engine" in out
    # Every graft variant's greedy tokens equal transformers' on the identical model.
    rows = [line for line in out.splitlines() if line.startswith("| graft")]
    assert rows and all("| yes |" in line for line in rows if "floor" not in line), out


@pytest.mark.slow
def test_serve_load_runs_both_arms_without_errors() -> None:
    out = run(
        "serve_load.py",
        "--preset",
        "nano",
        "--requests",
        "8",
        "--concurrency",
        "4",
        "--max-batch",
        "4",
        "--max-tokens",
        "4",
        "--threads",
        "1",
    )
    assert "| batched |" in out and "| sequential |" in out and "errors: none" in out


@pytest.mark.slow
def test_lora_memory_reports_each_method() -> None:
    out = run(
        "lora_memory.py",
        "--preset",
        "nano",
        "--vocab",
        "512",
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--steps",
        "1",
    )
    rows = {
        line.split("|")[1].strip(): line
        for line in out.splitlines()
        if line.startswith("| ") and "method" not in line
    }
    assert set(rows) == {"full", "lora", "freeze"}
    assert "100.00%" in rows["full"] and "100.00%" not in rows["lora"]
