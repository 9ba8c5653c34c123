"""Smoke test of bench/memory_table.py: it prints its table, says the figures are computed and
leave activations out, counts a preset's parameters as the built model does, and shards them over
the FSDP processes."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import pytest

from graft.model.config import PRESETS, preset
from graft.model.transformer import LanguageModel


@pytest.fixture(scope="module")
def bench(load_bench: Callable[[str], ModuleType]) -> ModuleType:
    return load_bench("memory_table")


def test_every_preset_has_a_row_that_says_what_it_is(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = bench.main([])
    out = capsys.readouterr().out
    assert [r.preset for r in rows] == list(PRESETS)
    assert "computed from parameter counts, not measured" in out
    assert "Activations are not included" in out
    assert out.count("\n| `") == len(PRESETS)


@pytest.mark.parametrize("name", ["micro", "llama-micro", "bert-micro"])
def test_the_meta_count_is_the_built_models(
    bench: ModuleType, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (row,) = bench.main(["--presets", name, "--vocab", "64"])
    capsys.readouterr()
    built = LanguageModel(preset(name, vocab_size=64))  # real tensors, on the CPU
    assert row.vocab == 64 and row.parameters == built.num_parameters()
    assert row.total == 16 * built.num_parameters()  # fp32 weights, gradients, two moments


def test_a_preset_with_its_own_vocabulary_keeps_it(bench: ModuleType) -> None:
    assert bench.parameter_count("gpt2-124m", vocab=64) == (124_439_808, 50_257)  # GPT-2 small


def test_fsdp_holds_an_eighth_per_process(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    (row,) = bench.main(["--presets", "small"])
    out = capsys.readouterr().out
    assert row.processes == 8
    for whole in (row.weights, row.gradients, row.moments, row.total):
        assert row.sharded(whole) * 8 == whole
    line = next(line for line in out.splitlines() if line.startswith("| `small`"))
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    ddp_total, fsdp_total = cells[6], cells[10]
    assert ddp_total == bench.human(row.total) and fsdp_total == bench.human(row.total / 8)
