"""EleutherAI's lm-evaluation-harness against a live `graft serve` (its `local-completions`
model, which scores a request by sending context + continuation to /v1/completions with echo,
logprobs 1 and max_tokens 1): a likelihood task, a multiple-choice task and a rolling perplexity
task, defined here as custom task YAML over JSONL files this module writes (nothing is fetched from
a hub). Every loglikelihood it reports equals graft's own for the same tokens, its multiple-choice
accuracy is graft's argmax, and its perplexities are `graft eval --task lm`'s."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from graft.checkpoint import save_checkpoint
from graft.data.records import IGNORE_INDEX
from graft.data.tokenizer import Tokenizer
from graft.evaluate.evaluate import EvalOptions, evaluate_checkpoint
from graft.model.convert.hf_export import export_hf
from graft.model.transformer import LanguageModel

from .conftest import CONTEXT, MODEL_NAME, build, live_server, tiny_model

pytestmark = pytest.mark.slow

# lm-eval keeps one token of max_length for the token it asks to be generated and, in rolling
# windows, one for context: with max_length = the context, each window predicts CONTEXT - 2 tokens.
ROLLING_WINDOW = CONTEXT - 2
TASKS = {"likelihood": "graft_last_word", "choice": "graft_choice", "rolling": "graft_text"}


@dataclass
class Harness:
    model: LanguageModel
    tokenizer: Tokenizer
    results: dict[str, Any]
    samples: dict[str, list[dict[str, Any]]]
    greedy_docs: int
    text_file: Path
    checkpoint: Path
    hf: Path
    tasks: Path


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _task(name: str, data: Path, cache: Path, body: str) -> str:
    # `json` is a loader packaged with datasets: the files below are read locally, and the
    # datasets cache goes under the test's own folder.
    return (
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {cache}\ntest_split: test\n{body}"
    )


def _greedy_continuations(
    model: LanguageModel, tokenizer: Tokenizer, contexts: list[str], wanted: int
) -> list[dict[str, str]]:
    """Contexts whose target is the model's own most likely next token, kept where lm-eval's
    split of context + target gives back exactly that token (so it must report is_greedy)."""
    docs = []
    for context in contexts:
        ids = tokenizer.encode(context)
        with torch.no_grad():
            best = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        target = tokenizer.decode([best])
        if target.strip() and tokenizer.encode(context + target) == [*ids, best]:
            docs.append({"context": context, "target": target})
        if len(docs) == wanted:
            break
    return docs


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("lm_eval")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        import lm_eval
        from lm_eval.tasks import TaskManager

        model = tiny_model(tokenizer)
        # The documented route: lm-eval reads the tokenizer from `graft export --format hf`.
        hf = export_hf(model, root / "hf", tokenizer=tokenizer)
        checkpoint = save_checkpoint(
            root / "ckpt", model=model, tokenizer=tokenizer, run_config_yaml="{}\n"
        )

        words = (
            "the river runs past a small stone house where the quick brown fox keeps "
            "a red bird and every day the cat finds large trees near the data shard"
        ).split()

        def text(start: int, n: int) -> str:
            return " ".join(words[(start + i) % len(words)] for i in range(n))

        contexts = [text(i, 6 + i % 5) for i in range(40)]
        greedy = _greedy_continuations(model, tokenizer, contexts, wanted=3)
        likely = [
            {"context": text(3 * i, 7), "target": " " + words[(5 * i) % 20]} for i in range(3)
        ]
        choices = [
            {
                "question": text(2 * i, 8),
                "choices": [text(i + 1, 1), text(i + 4, 2), text(i + 9, 3)],
                "label": i % 3,
            }
            for i in range(5)
        ]
        # One document spans more than two windows (the last reads context before it); two fit one.
        documents = [{"text": text(0, 2 * ROLLING_WINDOW)}, {"text": text(7, 30)}, {"text": "Fox."}]
        cache = root / "datasets_cache"
        data = {
            "likelihood": _jsonl(root / "last_word.jsonl", greedy + likely),
            "choice": _jsonl(root / "choice.jsonl", choices),
            "rolling": _jsonl(root / "text.jsonl", documents),
        }
        tasks = root / "tasks"
        tasks.mkdir()
        bodies = {
            "likelihood": 'output_type: loglikelihood\ndoc_to_text: "{{context}}"\n'
            'doc_to_target: "{{target}}"\ntarget_delimiter: ""\n'
            "metric_list:\n  - metric: acc\n  - metric: perplexity\n",
            "choice": 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
            "doc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n",
            "rolling": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\n'
            'doc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n'
            "  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        }
        for kind, name in TASKS.items():
            (tasks / f"{name}.yaml").write_text(
                _task(name, data[kind], cache, bodies[kind]), encoding="utf-8"
            )

        served = build(tokenizer, model)
        try:
            with live_server(served.app) as url:
                out = lm_eval.simple_evaluate(
                    model="local-completions",
                    model_args={
                        "base_url": f"{url}/v1/completions",
                        "model": MODEL_NAME,
                        "tokenizer_backend": "huggingface",
                        "tokenizer": str(hf),
                        "max_length": CONTEXT,
                    },
                    tasks=list(TASKS.values()),
                    # Only the tasks defined here: indexing lm-eval's thousands takes seconds.
                    task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                    # Four prompts a request: the server's batches of prompts, scored and
                    # continued together.
                    batch_size=4,
                    log_samples=True,
                    bootstrap_iters=0,
                )
        finally:
            served.engine.stop()
    assert out is not None
    yield Harness(
        model,
        tokenizer,
        out["results"],
        out["samples"],
        len(greedy),
        data["rolling"],
        checkpoint,
        hf,
        tasks,
    )


def own_loglikelihood(
    model: LanguageModel, tokenizer: Tokenizer, context: str, continuation: str
) -> tuple[float, bool]:
    """graft's own score of one request: split into tokens as lm-eval splits it (the context's
    trailing spaces move to the continuation, whose tokens are what encoding the whole adds to the
    context's), then one forward pass of the model: the negated summed cross-entropy over the
    continuation (what graft eval sums) and whether each continuation token is the argmax."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    scored_from = len(tokenizer.encode(context))
    x = torch.tensor([whole[:-1]])
    y = torch.tensor([whole[1:]])
    y[0, : scored_from - 1] = IGNORE_INDEX
    with torch.no_grad():
        loss = model(x, targets=y).lm_loss
        logits = model(x).logits
    assert loss is not None and logits is not None
    greedy = bool((logits[0, scored_from - 1 :].argmax(-1) == y[0, scored_from - 1 :]).all())
    return -float(loss), greedy


def _requests(sample: dict[str, Any]) -> list[tuple[tuple[str, str], tuple[float, bool]]]:
    return list(zip(sample["arguments"], sample["filtered_resps"], strict=True))


def test_likelihoods_equal_grafts_own(harness: Harness) -> None:
    """The loglikelihood task: each request's loglikelihood within 1e-4 of graft's own, and
    is_greedy too, true for the targets that are the model's own greedy token."""
    samples = harness.samples[TASKS["likelihood"]]
    assert len(samples) == harness.greedy_docs + 3 and harness.greedy_docs >= 1
    greedy = 0
    for sample in samples:
        [((context, continuation), (logprob, is_greedy))] = _requests(sample)
        own, own_greedy = own_loglikelihood(harness.model, harness.tokenizer, context, continuation)
        assert logprob == pytest.approx(own, abs=1e-4), sample["doc"]
        assert is_greedy == own_greedy, sample["doc"]
        greedy += is_greedy
    assert greedy >= harness.greedy_docs
    assert harness.results[TASKS["likelihood"]]["acc,none"] == pytest.approx(greedy / len(samples))


def test_multiple_choice_accuracy_is_grafts_argmax(harness: Harness) -> None:
    samples = harness.samples[TASKS["choice"]]
    assert len(samples) == 5
    right = 0
    for sample in samples:
        own = []
        for (context, continuation), (logprob, _) in _requests(sample):
            own.append(
                own_loglikelihood(harness.model, harness.tokenizer, context, continuation)[0]
            )
            assert logprob == pytest.approx(own[-1], abs=1e-4)
        right += max(range(len(own)), key=own.__getitem__) == sample["doc"]["label"]
    assert harness.results[TASKS["choice"]]["acc,none"] == pytest.approx(right / len(samples))


def test_perplexities_equal_graft_eval(harness: Harness, tmp_path: Path) -> None:
    """lm-eval's rolling perplexities (each document on its own, in windows of max_length - 2
    predicted tokens over the API) equal `graft eval --task lm --seq-len <that>` on the same
    documents: the same windows, the same words and bytes."""
    report = evaluate_checkpoint(
        EvalOptions(
            harness.checkpoint,
            "lm",
            (harness.text_file,),
            out_dir=tmp_path / "eval",
            seq_len=ROLLING_WINDOW,
        )
    )
    graft = json.loads(report.read_text(encoding="utf-8"))
    theirs = harness.results[TASKS["rolling"]]
    lengths = [
        len(harness.tokenizer.encode(json.loads(line)["text"]))
        for line in harness.text_file.read_text(encoding="utf-8").splitlines()
    ]
    # The first document takes whole windows and a remainder read after earlier context.
    assert lengths[0] > 2 * ROLLING_WINDOW and lengths[0] % ROLLING_WINDOW
    assert graft["windows"] == sum(math.ceil(n / ROLLING_WINDOW) for n in lengths)
    assert theirs["word_perplexity,none"] == pytest.approx(graft["word_ppl"], rel=1e-5)
    assert theirs["bits_per_byte,none"] == pytest.approx(graft["bits_per_byte"], rel=1e-5)
    assert theirs["byte_perplexity,none"] == pytest.approx(
        math.pow(2, graft["bits_per_byte"]), rel=1e-5
    )


def test_the_exported_model_in_lm_eval_has_graft_evals_default_perplexities(
    harness: Harness, tmp_path: Path
) -> None:
    """lm-eval's own `hf` model on `graft export --format hf`'s directory reads windows of the
    whole context, which is what `graft eval --task lm` reads by default."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(harness.hf), "dtype": "float32"},
            tasks=[TASKS["rolling"]],
            task_manager=TaskManager(include_path=str(harness.tasks), include_defaults=False),
            device="cpu",
            bootstrap_iters=0,
        )
    assert out is not None
    theirs = out["results"][TASKS["rolling"]]
    options = EvalOptions(harness.checkpoint, "lm", (harness.text_file,), out_dir=tmp_path)
    graft = json.loads(evaluate_checkpoint(options).read_text(encoding="utf-8"))
    assert graft["seq_len"] == CONTEXT
    assert theirs["word_perplexity,none"] == pytest.approx(graft["word_ppl"], rel=1e-5)
    assert theirs["bits_per_byte,none"] == pytest.approx(graft["bits_per_byte"], rel=1e-5)
