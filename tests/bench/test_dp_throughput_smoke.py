"""Smoke test of bench/dp_throughput.py at a tiny size: every arm (plain, dp-ghost, dp-flat) under
full fine-tuning and LoRA builds, steps, is timed and has its peak memory measured in its own
process, and the ratios to plain are positive finite numbers. No timing is asserted (benchmarks
are scripts)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

# A one-block nano model over 60 records of 32 tokens: a few seconds, most of them imports. One
# thread, as the other bench smoke tests run (OMP_NUM_THREADS=1): two on a busy machine crawl.
SMOKE = ["--preset", "nano", "--model.n_layers=1", "--seq-len", "32", "--records", "60"]
SMOKE += ["--batch-size", "2", "--accum", "2", "--steps", "2", "--warmup", "1", "--rounds", "1"]
SMOKE += ["--threads", "1"]


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("dp_throughput")


@pytest.fixture(autouse=True)
def same_threads() -> Iterator[None]:
    """--threads sets torch's thread count for the whole test process: put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_arm_runs_with_positive_ratios(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not bench.DEFAULT_DATA.is_file():
        pytest.skip(f"{bench.DEFAULT_DATA}: the SMS spam records are not on this machine")
    out = tmp_path / "report.json"
    report = bench.main([*SMOKE, "--json", str(out)])
    printed = capsys.readouterr().out
    rows = {(r.arm, r.method): r for r in report.rows}
    assert list(rows) == [(a, m) for m in bench.METHODS for a in bench.ARMS]
    for (arm, method), r in rows.items():
        assert r.memory_error is None, (arm, method, r.memory_error)
        assert len(r.tok_s) == 1 and r.median > 0
        for value in (r.tok_s_ratio, r.peak_mb, r.peak_ratio, r.process_peak_mb):
            assert math.isfinite(value) and value > 0, (arm, method, value)
        assert f"| {arm} | {method} | " in report.table
    assert rows[("plain", "full")].tok_s_ratio == rows[("plain", "lora")].tok_s_ratio == 1.0
    assert rows[("plain", "lora")].trainable < rows[("plain", "full")].trainable  # adapters only
    assert report.table in printed and "dp-ghost/full ghost" in printed
    assert report.command.startswith("python bench/dp_throughput.py --preset nano")
    assert f"command: {report.command}" in printed and "torch " in report.machine
    assert json.loads(out.read_text())["rows"][0]["arm"] == "plain"


def test_rejects_an_unknown_arm(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main([*SMOKE, "--arms", "plain,dp-nope"])
