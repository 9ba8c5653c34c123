"""Smoke test of bench/gpu_train_step.py on a CPU at a tiny shape, eager: every arm builds, steps
and is timed, so the one GPU run it is written for cannot fail on a typo; graft's fused loss and
the plain F.cross_entropy loss agree on step one; a failing arm is reported, not fatal. No timing
is asserted (benchmarks are scripts)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import transformers  # noqa: F401 - the bench needs it: fail, do not skip, without it

import graft.model.losses as losses

SMOKE = ["--tiny", "--device", "cpu", "--no-compile", "--steps", "1", "--repeats", "1"]
SMOKE += ["--warmup", "1"]


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("gpu_train_step")


@pytest.fixture(scope="module")
def report(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("gpu_train_step") / "result.json"
    result: dict[str, Any] = bench.main([*SMOKE, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    return result


def test_every_arm_runs(bench: ModuleType, report: dict[str, Any]) -> None:
    arms = {a["name"]: a for a in report["arms"]}
    assert list(arms) == bench.DEFAULT_ARMS
    for name, arm in arms.items():
        assert arm["status"] == "ok" and arm["error"] is None, (name, arm["error"])
        assert len(arm["tok_s"]) == 1 and arm["tok_s_median"] > 0
        assert arm["ratio_to_hf"] > 0 and arm["mfu"] > 0
        assert arm["first_loss"] > 0 and arm["last_loss"] > 0
        # fp32 weights, AdamW's two moments, its step counters: at least 12 bytes a parameter
        assert arm["state_bytes"] >= 12 * report["params"]
        assert arm["peak_bytes"] is None  # CUDA only
        assert f"| {name} | " in report["table"]
    assert arms["hf"]["ratio_to_hf"] == 1.0
    assert report["params"] == report["hf_params"] > 0
    assert losses._CHUNK_ROWS == 512  # the chunk arms restored it


def test_report_says_what_ran(report: dict[str, Any]) -> None:
    for key in ("torch", "transformers", "cuda", "device_name", "command", "date"):
        assert key in report
    assert report["command"].startswith("bench/gpu_train_step.py --tiny")
    assert report["tokens_per_step"] == report["batch"] * report["seq_len"] == 2 * 64
    assert report["model"]["n_layers"] == 2 and report["model"]["dropout"] == 0.0
    # Every arm's description says "compiled"; an eager run must not read as a compiled one.
    assert all(a["what"].endswith("[all eager: --no-compile]") for a in report["arms"])


def test_fused_and_plain_losses_agree(report: dict[str, Any]) -> None:
    """Same weights, same batch: graft's fused chunked loss (every chunk size) equals logits +
    F.cross_entropy on step one."""
    first = {a["name"]: a["first_loss"] for a in report["arms"]}
    plain = first["graft_whole_plain"]
    for name in ("graft", "graft_chunk4096", "graft_chunk16384", "graft_whole_fused"):
        assert first[name] == pytest.approx(plain, rel=1e-4), name


def test_a_failing_arm_is_reported(
    bench: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    build = bench.build_arm

    def broken(spec: Any, *args: Any, **kwargs: Any) -> Any:
        if spec.name == "graft_chunk4096":
            raise RuntimeError("compile failed\nsecond line")
        return build(spec, *args, **kwargs)

    monkeypatch.setattr(bench, "build_arm", broken)
    out = tmp_path / "result.json"
    report = bench.main([*SMOKE, "--arms", "hf,graft_chunk4096,graft", "--out", str(out)])
    arms = {a["name"]: a for a in report["arms"]}
    assert arms["graft_chunk4096"]["status"] == "failed"
    assert arms["graft_chunk4096"]["error"] == "RuntimeError: compile failed"
    assert "failed: RuntimeError: compile failed" in report["table"]
    assert arms["hf"]["status"] == arms["graft"]["status"] == "ok"
    assert arms["graft"]["ratio_to_hf"] > 0
    assert json.loads(out.read_text())["arms"][1]["status"] == "failed"


def test_rejects_an_unknown_arm(bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        bench.main([*SMOKE, "--arms", "graft,nope"])
