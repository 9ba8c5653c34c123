"""`graft explain` on tiny checkpoints: attention maps equal to a softmax computed here from the
module's weights, rollout by hand, surprisal equal to the cross-entropy, the logit lens's last
layer equal to the model's own prediction, integrated gradients that satisfy completeness, a
too-long text cut with a note (never a traceback), one-line errors, and the page in headless
Chromium with no failed request and no console error."""

from __future__ import annotations

import contextlib
import io
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from graft.checkpoint import save_checkpoint
from graft.cli import main
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.errors import ConfigError
from graft.insight.explain import (
    attention_rollout,
    explain_text,
    integrated_gradients,
)
from graft.insight.explain_page import PAGE_FILE
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel

from .conftest import open_page

CONTEXT = 32
TEXT = "the fox sees a river"
LONG_TEXT = "the quick brown fox jumps over the lazy dog by the river " * 3  # 171 bytes
KINDS: dict[str, dict[str, Any]] = {
    "causal": {},
    "classifier": dict(head="sequence", labels=("neg", "pos")),
    "encoder": dict(attention="bidirectional", norm_position="post", mlm_head=True, pooler=True),
    "encoder-classifier": dict(
        attention="bidirectional",
        norm_position="post",
        mlm_head=True,
        pooler=True,
        head="sequence",
        labels=("a", "b", "c"),
    ),
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return bytes_tokenizer()


def tiny(tokenizer: Tokenizer, kind: str, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_len=CONTEXT,
        d_model=16,
        n_layers=2,
        n_heads=2,
        init_std=0.3,  # peaked weights: attention far from uniform, logits far from flat
        **KINDS[kind],
    )
    return LanguageModel(config).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain_checkpoints")
    return {
        kind: save_checkpoint(
            root / kind, model=tiny(tokenizer, kind), tokenizer=tokenizer, run_config_yaml="{}"
        )
        for kind in ("causal", "classifier")
    }


def reference_attention(model: LanguageModel, ids: list[int]) -> list[np.ndarray]:
    """Each layer's (H, T, T) softmax(q k^T / sqrt(D) + causal mask) of a GPT-2 style model,
    head by head, from its weights: the blocks carry the residual stream between layers."""
    config, backbone = model.config, model.model
    T, H, D = len(ids), config.n_heads, config.head_dim
    with torch.no_grad():
        x = backbone.embed_tokens.weight[ids] + backbone.embed_positions.weight[:T]
        maps = []
        for block in backbone.layers:
            h = block.input_layernorm(x)
            q = block.self_attn.q_proj(h).view(T, H, D)
            k = block.self_attn.k_proj(h).view(T, H, D)
            layer = np.zeros((H, T, T))
            for head in range(H):
                scores = (q[:, head] @ k[:, head].T / math.sqrt(D)).double().numpy()
                scores[np.triu_indices(T, 1)] = -np.inf  # a query sees itself and the past
                e = np.exp(scores - scores.max(axis=1, keepdims=True))
                layer[head] = e / e.sum(axis=1, keepdims=True)
            maps.append(layer)
            x, _ = block(x[None], None, None, True, None)
            x = x[0]
    return maps


def test_attention_maps_equal_a_reference_softmax(tokenizer: Tokenizer) -> None:
    model = tiny(tokenizer, "causal")
    explanation = explain_text(model, tokenizer, TEXT)
    assert explanation.attentions.shape == (2, 2, len(TEXT), len(TEXT))
    for layer, expected in enumerate(reference_attention(model, explanation.ids)):
        np.testing.assert_allclose(explanation.attentions[layer], expected, atol=1e-6)
    # The reference sees a difference: another model's maps are not these.
    other = explain_text(tiny(tokenizer, "causal", seed=1), tokenizer, TEXT)
    assert not np.allclose(other.attentions[0], explanation.attentions[0], atol=1e-3)


def test_rollout_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.25, 0.75]])
    b = np.array([[1.0, 0.0], [0.5, 0.5]])
    d = np.array([[0.0, 0.0], [0.25, -0.25]])
    # Two layers of two heads each: head means a and b, plus the identity, rows renormalised.
    attentions = np.stack([np.stack([a, a]), np.stack([b + d, b - d])])
    first = (a + np.eye(2)) / 2
    second = (b + np.eye(2)) / 2
    np.testing.assert_allclose(attention_rollout(attentions), second @ first)
    np.testing.assert_allclose(attention_rollout(attentions).sum(axis=1), [1.0, 1.0])


def test_rollout_of_a_causal_model_never_reaches_forward(tokenizer: Tokenizer) -> None:
    explanation = explain_text(tiny(tokenizer, "causal"), tokenizer, TEXT)
    rollout = explanation.rollout
    np.testing.assert_allclose(rollout.sum(axis=1), np.ones(len(TEXT)), atol=1e-9)
    assert np.abs(np.triu(rollout, 1)).max() == 0.0
    assert explanation.read_at == [len(TEXT) - 1]


def test_surprisal_is_the_cross_entropy_of_each_next_token(tokenizer: Tokenizer) -> None:
    model = tiny(tokenizer, "causal")
    explanation = explain_text(model, tokenizer, TEXT)
    ids = torch.tensor(explanation.ids)
    with torch.no_grad():
        logits = model(ids[None]).logits
    assert logits is not None
    expected = F.cross_entropy(logits[0, :-1], ids[1:], reduction="none")
    assert explanation.surprisal is not None and explanation.surprisal[0] is None
    np.testing.assert_allclose(explanation.surprisal[1:], expected.numpy(), rtol=1e-5)


@pytest.mark.parametrize("kind", ["causal", "encoder"])
def test_the_logit_lens_last_layer_is_the_models_own_prediction(
    tokenizer: Tokenizer, kind: str
) -> None:
    model = tiny(tokenizer, kind)
    explanation = explain_text(model, tokenizer, TEXT)
    with torch.no_grad():
        logits = model(torch.tensor([explanation.ids])).logits
    assert logits is not None and explanation.lens is not None
    probs = logits[0].softmax(dim=-1)
    predicted = [tokenizer.decode([int(i)]) for i in probs.argmax(dim=-1)]
    assert explanation.lens.tokens[-1] == predicted
    np.testing.assert_allclose(explanation.lens.probs[-1], probs.max(dim=-1).values, rtol=1e-5)
    assert len(explanation.lens.tokens) == model.config.n_layers + 1
    # The embeddings' row is another prediction: the lens reads each layer, not the output.
    assert not np.allclose(explanation.lens.probs[0], explanation.lens.probs[-1], atol=1e-3)


@pytest.mark.parametrize("kind", ["classifier", "encoder-classifier"])
def test_integrated_gradients_are_complete(tokenizer: Tokenizer, kind: str) -> None:
    model = tiny(tokenizer, kind)
    explanation = explain_text(model, tokenizer, TEXT, steps=48)
    a = explanation.attribution
    assert a is not None and len(a.scores) == len(explanation.ids)
    # The ends are the model's own logits: at the text, and with every token embedding zeroed.
    ids = torch.tensor([explanation.ids])
    target = model.config.labels.index(a.label)
    with torch.no_grad():
        at_text = model(ids, heads=("classifier",)).class_logits
        zeros = torch.zeros(1, len(explanation.ids), model.config.d_model)
        at_baseline = model(inputs_embeds=zeros, heads=("classifier",)).class_logits
    assert at_text is not None and at_baseline is not None
    assert a.predicted == model.config.labels[int(at_text[0].argmax())] == a.label
    assert a.logit == pytest.approx(float(at_text[0, target]), abs=1e-5)
    assert a.baseline_logit == pytest.approx(float(at_baseline[0, target]), abs=1e-5)
    assert abs(a.gap) > 0.05  # a gap worth checking a 1% error against
    assert abs(sum(a.scores) - a.gap) <= 0.01 * abs(a.gap)
    # The check can fail: one trapezoid step is far from the integral on this model.
    rough, logit, baseline = integrated_gradients(model, ids[0], target, steps=1)
    assert abs(rough.sum() - (logit - baseline)) > 0.01 * abs(logit - baseline)


def test_a_chosen_label_is_attributed(tokenizer: Tokenizer) -> None:
    model = tiny(tokenizer, "encoder-classifier")
    predicted = explain_text(model, tokenizer, TEXT).attribution
    assert predicted is not None
    other = next(label for label in model.config.labels if label != predicted.label)
    chosen = explain_text(model, tokenizer, TEXT, label=other).attribution
    assert chosen is not None and chosen.label == other and chosen.predicted == predicted.label
    assert chosen.completeness_error <= 0.01
    with pytest.raises(ConfigError, match=r"--label 'x' is not one of the model's labels: a, b, c"):
        explain_text(model, tokenizer, TEXT, label="x")
    with pytest.raises(ConfigError, match="--label is for sequence classifiers"):
        explain_text(tiny(tokenizer, "causal"), tokenizer, TEXT, label="a")


def test_an_encoder_has_no_next_token_loss_and_says_so(tokenizer: Tokenizer) -> None:
    explanation = explain_text(tiny(tokenizer, "encoder"), tokenizer, TEXT)
    assert explanation.surprisal is None and explanation.attribution is None
    assert explanation.lens is not None
    assert explanation.ids[0] == tokenizer.cls_id and explanation.ids[-1] == tokenizer.sep_id
    assert any("no per-token loss: an encoder" in note for note in explanation.notes)


def test_a_text_longer_than_the_context_is_cut_with_a_note(tokenizer: Tokenizer) -> None:
    for kind in ("causal", "encoder"):
        explanation = explain_text(tiny(tokenizer, kind), tokenizer, LONG_TEXT)
        assert len(explanation.ids) == CONTEXT
        assert explanation.attentions.shape[-1] == CONTEXT
        kept = CONTEXT - (2 if kind == "encoder" else 0)  # [CLS] and [SEP] are kept
        (note,) = [n for n in explanation.notes if "longer than the model's context" in n]
        assert f"first {kept} tokens" in note
        assert f"about {kept} of its {len(LONG_TEXT)} characters" in note
        assert f"remaining {len(LONG_TEXT) - kept} characters or so were left out" in note
    fits = explain_text(tiny(tokenizer, "causal"), tokenizer, LONG_TEXT[:CONTEXT])
    assert not any("longer" in note for note in fits.notes)


def test_an_empty_text_is_refused(tokenizer: Tokenizer) -> None:
    with pytest.raises(ConfigError, match="--text has no tokens"):
        explain_text(tiny(tokenizer, "encoder"), tokenizer, "")


# --- the command and its page ------------------------------------------------------------------


class _Page(HTMLParser):
    """What the page links to and its notes."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []
        self.notes = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "img":
            self.sources.append(found["src"] or "")
        if tag in ("link", "script", "a"):
            self.links.append(found.get("href") or found.get("src") or "")
        if ("class", "note") in attrs:
            self.notes += 1


@pytest.fixture(scope="module")
def explained(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[int, str, Path]]:
    """`graft explain` on each checkpoint with a text longer than its context: the exit code,
    what it printed and the folder it wrote."""
    root = tmp_path_factory.mktemp("explained")
    runs = {}
    for kind, checkpoint in checkpoints.items():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(
                ["explain", str(checkpoint), "--text", LONG_TEXT, "--out", str(root / kind)]
            )
        runs[kind] = (code, printed.getvalue(), root / kind)
    return runs


@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_the_command_explains_a_long_text_without_a_traceback(
    explained: dict[str, tuple[int, str, Path]], kind: str
) -> None:
    code, printed, out = explained[kind]
    assert code == 0
    assert "note: the text is longer than the model's context" in printed
    assert f"explained {CONTEXT} tokens: {out / PAGE_FILE}" in printed
    lens = ["logit_lens.png"] if kind == "causal" else []
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["attention_layer_00.png", "attention_layer_01.png", PAGE_FILE, "rollout.png", *lens]
    )
    page = _Page()
    page.feed((out / PAGE_FILE).read_text(encoding="utf-8"))
    assert sorted(page.sources) == sorted(p.name for p in out.glob("*.png"))  # relative, present
    assert page.links == ["data:,"]  # nothing fetched from elsewhere
    assert page.notes == 2  # the cut, and what this kind of model does not get


def test_command_errors_are_one_line(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    args = ["explain", str(checkpoints["classifier"]), "--text", TEXT, "--out", str(out)]
    assert main([*args, "--label", "maybe"]) == 2
    assert capsys.readouterr().err == (
        "graft: error: --label 'maybe' is not one of the model's labels: neg, pos\n"
    )
    assert main([*args, "--steps", "0"]) == 2
    assert capsys.readouterr().err == "graft: error: --steps must be at least 1, got 0\n"
    assert not out.exists()


def test_without_out_a_run_checkpoint_is_explained_into_the_run(
    checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RUN/explain: where `graft export` finds the page to carry and the model card to link."""
    import shutil

    last = tmp_path / "run" / "checkpoints" / "last"
    shutil.copytree(checkpoints["causal"], last)
    assert main(["explain", str(last), "--text", TEXT]) == 0
    assert (tmp_path / "run" / "explain" / PAGE_FILE).is_file()
    loose = ["explain", str(checkpoints["causal"]), "--text", TEXT]
    assert main(loose) == 2
    assert "is not in a run directory; say where to write" in capsys.readouterr().err


# --- in a real browser -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["causal", "classifier"])
def test_the_page_opens_in_chromium_with_no_failed_request_or_error(
    browser: Any, explained: dict[str, tuple[int, str, Path]], kind: str, tmp_path: Path
) -> None:
    from PIL import Image

    out = explained[kind][2]
    shot = tmp_path / f"explain-{kind}.png"
    problems, page = open_page(browser, out / PAGE_FILE, shot)
    assert problems == []
    # Every image drawn: two layers' maps, the rollout, and a causal LM's logit lens.
    assert page.locator("img").count() == (4 if kind == "causal" else 3)
    assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth)")
    assert page.locator(".note").first.text_content().startswith("the text is longer")
    section = (
        "Completeness: the attributions"
        if kind == "classifier"
        else "How much each token surprised"
    )
    assert page.get_by_text(section).count() >= 1
    assert shot.stat().st_size > 20_000
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 1500
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50  # not blank
    page.close()


@pytest.mark.slow
def test_the_browser_check_sees_a_missing_image(browser: Any, tmp_path: Path) -> None:
    """The harness itself: a page whose image is missing and whose script fails reports both."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!doctype html><img src="missing.png"><script>nope(</script>', encoding="utf-8"
    )
    problems, page = open_page(browser, broken)
    assert any(p.startswith("failed: ") and p.endswith("missing.png") for p in problems)
    assert any(p.startswith(("console: ", "page error: ")) for p in problems)
    page.close()
