"""Beam search behind `graft generate --beams` and `graft eval --task generate --beams`
(in-process, on a tiny random checkpoint): the options reach beam_search, its best hypothesis is
what is printed or scored, and options that make no sense with it are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import graft.evaluate.evaluate as evaluate_module
from graft.checkpoint import load_model, save_checkpoint
from graft.cli import main
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import ConfigError
from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
from graft.infer.beam import BeamParams, BeamResult, beam_search
from graft.infer.generate import SamplingParams, generate
from graft.model.config import preset
from graft.model.transformer import LanguageModel

EOT_ID = 256  # the bytes tokenizer's end of text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    config = preset(
        "nano", vocab_size=262, max_seq_len=64, d_model=32, n_layers=2, n_heads=2, init_std=0.3
    )
    return save_checkpoint(
        tmp_path_factory.mktemp("beam") / "lm",
        model=LanguageModel(config),
        tokenizer=bytes_tokenizer(),
        run_config_yaml="{}",
    )


def test_generate_prints_the_best_hypothesis(
    checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = load_model(checkpoint)
    prompt = "The river"
    ids = tokenizer.encode(prompt)
    params = BeamParams(beams=4, max_new_tokens=6, length_penalty=0.5, stop_ids=frozenset({EOT_ID}))
    best = [i for i in beam_search(model, ids, params).ids if i != EOT_ID]
    greedy = SamplingParams(max_new_tokens=6, temperature=0, stop_ids=frozenset({EOT_ID}))
    assert best != [i for i in generate(model, ids, greedy) if i != EOT_ID]  # not greedy's text
    argv = ["generate", str(checkpoint), "--prompt", prompt, "--max-new-tokens", "6"]
    assert main([*argv, "--beams", "4", "--length-penalty", "0.5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == prompt + tokenizer.decode(best) + "\n"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beams", "2", "--temperature", "0.7"], "leave out --temperature"),
        (["--beams", "2", "--top-k", "5", "--seed", "1"], "leave out --top-k, --seed"),
        (["--beams", "2", "--top-p", "0.9"], "leave out --top-p"),
        (["--length-penalty", "2"], "give --beams N too"),
        (["--beams", "0"], "generate: beams must be >= 1, got 0"),
    ],
)
def test_generate_refuses_options_beam_search_does_not_read(
    checkpoint: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["generate", str(checkpoint), "--prompt", "a", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("graft: error: ") and message in err


def test_eval_decodes_with_beam_search_and_says_so(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"source": "the fox", "target": "runs"}, {"source": "a stone", "target": "sees"}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    calls: list[tuple[BeamParams, BeamResult]] = []

    def recorded(model: LanguageModel, ids: list[int], params: BeamParams) -> BeamResult:
        calls.append((params, beam_search(model, ids, params)))
        return calls[-1][1]

    monkeypatch.setattr(evaluate_module, "beam_search", recorded)
    options = EvalOptions(
        checkpoint,
        "generate",
        (data,),
        out_dir=tmp_path / "beam",
        max_new_tokens=5,
        beams=3,
        length_penalty=0.5,
    )
    report = json.loads(evaluate_checkpoint(options).read_text(encoding="utf-8"))
    assert report["run"]["decoding"] == "beam 3, length penalty 0.5"
    expected = BeamParams(
        beams=3, max_new_tokens=5, length_penalty=0.5, stop_ids=frozenset({EOT_ID})
    )
    assert [params for params, _ in calls] == [expected, expected]
    _, tokenizer = load_model(checkpoint)
    samples = (tmp_path / "beam" / "generate_samples.jsonl").read_text().splitlines()
    for line, (_, result) in zip(samples, calls, strict=True):
        ids = result.ids[:-1] if result.ended else result.ids
        assert json.loads(line)["prediction"] == tokenizer.decode(ids).strip()

    calls.clear()
    greedy = EvalOptions(checkpoint, "generate", (data,), out_dir=tmp_path / "greedy")
    report = json.loads(evaluate_checkpoint(greedy).read_text(encoding="utf-8"))
    assert report["run"]["decoding"] == "greedy" and calls == []


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(task="lm", beams=2), "--beams: beam search decodes --task generate, not --task lm"),
        (dict(task="generate", length_penalty=2.0), "give --beams N"),
        (dict(task="generate", beams=0), "--beams must be a positive integer, got 0"),
        (dict(task="generate", beams=2, length_penalty=float("nan")), "finite number"),
    ],
)
def test_eval_refuses_beam_options_that_do_not_apply(
    checkpoint: Path, tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate_checkpoint(EvalOptions(checkpoint, data=(tmp_path,), **options))


def test_cli_eval_refuses_beams_for_another_task_in_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", str(checkpoint), "--task", "lm", "--data", str(tmp_path), "--beams", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "graft: error: --beams: beam search decodes --task generate, not --task lm\n"


def test_eval_reads_a_prompt_that_fits_whole_as_training_and_serving_do(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the default 128 new tokens in a 64-token context, a prompt of more than 32 tokens was
    cut to its last 32 (a chat prompt lost its role header) though fine-tuning and the server
    read it whole."""
    from graft.evaluate.prompts import generation_examples

    data = tmp_path / "pairs.jsonl"
    source = "Say where the river runs, and where it ends, please."
    data.write_text(json.dumps({"source": source, "target": "east"}) + "\n", encoding="utf-8")
    _, tokenizer = load_model(checkpoint)
    (example,), _ = generation_examples((data,), tokenizer)
    assert 32 < len(example.ids) < 64
    seen: list[list[int]] = []

    def recorded(model: LanguageModel, ids: list[int], params: SamplingParams):
        seen.append(list(ids))
        return generate(model, ids, params)

    monkeypatch.setattr(evaluate_module, "generate", recorded)
    options = EvalOptions(checkpoint, "generate", (data,), out_dir=tmp_path / "e")
    report = json.loads(evaluate_checkpoint(options).read_text(encoding="utf-8"))
    assert seen == [list(example.ids)] and report["prompts_truncated"] == 0
