"""Smoke test of bench/train_throughput.py: it runs end to end, and graft and its transformers twin
have equal parameter counts for every default preset. No timing is asserted (benchmarks are
scripts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import transformers  # noqa: F401 - the bench needs it: fail, do not skip, without it

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


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
    assert json.loads(out.read_text())["results"][0]["params"] == r.params
