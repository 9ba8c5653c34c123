"""Smoke test of bench/train_throughput.py: it runs end to end, and graft and its transformers twin
have equal parameter counts for every default preset. No timing is asserted (benchmarks are
scripts)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import transformers  # noqa: F401 - the bench needs it: fail, do not skip, without it


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("train_throughput")


@pytest.mark.parametrize("name", ["micro", "llama-micro", "small", "llama-small"])
def test_parameter_counts_are_equal(bench: ModuleType, name: str) -> None:
    _, graft, hf = bench.build_models(name, vocab=64)  # asserts equality itself
    assert bench.count_params(graft) == bench.count_params(hf)


def test_runs_one_preset(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    results = bench.main(
        [
            "--presets",
            "llama-micro",
            "--vocab",
            "64",
            "--batch-size",
            "1",
            "--seq-len",
            "16",
            "--repeats",
            "1",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--peak-size",
            "256",
            "--json",
            str(out),
        ]
    )
    (r,) = results
    assert r.preset == "llama-micro" and r.ratio > 0 and r.graft_mfu > 0 and r.hf_mfu > 0
    # graft spends part of its step elsewhere than its products, attention and update
    assert 0 < r.graft_floor_s and r.ceiling > r.ratio
    assert json.loads(out.read_text())["results"][0]["params"] == r.params
