"""The page of `graft explain`: PNG files drawn by matplotlib and an index.html that shows them.

The folder is written whole, atomically (graft.atomic_files.atomic_directory), and holds nothing
the page fetches from elsewhere: images by relative links, styles inline, no script, no font, so
it opens the same from a disk, an archive or a web server with no network.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from graft.atomic_files import atomic_directory
from graft.insight.explain import Explanation

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["PAGE_FILE", "write_page"]

PAGE_FILE = "index.html"
# Above this many tokens the axes carry no token labels: they would overlap into a grey band.
_LABELLED_TOKENS = 48
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 2em; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: .5em 1em; }
.tokens { line-height: 2.1; white-space: pre-wrap; font-family: monospace; font-size: 1.05em; }
.tokens span { padding: 2px 0; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
table { border-collapse: collapse; font-family: monospace; font-size: .85em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; white-space: pre; }
.legend { color: #555; font-size: .9em; }
"""


def write_page(explanation: Explanation, out: Path) -> Path:
    """Write the PNGs and index.html into `out`, replacing it whole. Returns index.html's path."""
    out = Path(out)
    with atomic_directory(out) as folder, warnings.catch_warnings():
        # A token in a script the bundled font lacks draws as a box; a warning per glyph adds
        # nothing to that.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        images = _draw_all(explanation, folder)
        (folder / PAGE_FILE).write_text(_page(explanation, images), encoding="utf-8")
    return out / PAGE_FILE


def _printable(token: str) -> str:
    """A token with its control characters (a byte tokenizer's lone bytes) written as escapes."""
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in token)


def _label(token: str) -> str:
    """A token as an axis label: spaces and line breaks made visible, long tokens shortened."""
    shown = _printable(token).replace(" ", "·").replace("\n", "⏎").replace("\t", "→")
    return shown if len(shown) <= 12 else shown[:11] + "…"


def _figure(width: float, height: float) -> Figure:
    # Figure + the Agg canvas directly, not pyplot: no global backend switch, no figure registry.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _ticks(ax: Axes, labels: Sequence[str], *, rows: bool = True, cols: bool = True) -> None:
    """Token labels on the rows and the columns asked for, when there are few enough to read;
    no ticks otherwise (labels cost most of a figure's drawing time)."""
    readable = len(labels) <= _LABELLED_TOKENS
    size = 7 if len(labels) <= 24 else 5
    shown = [_label(t) for t in labels]
    if cols and readable:
        ax.set_xticks(range(len(shown)), labels=shown, rotation=90, fontsize=size)
    else:
        ax.set_xticks([])
    if rows and readable:
        ax.set_yticks(range(len(shown)), labels=shown, fontsize=size)
    else:
        ax.set_yticks([])


def _draw_all(explanation: Explanation, folder: Path) -> dict[str, str]:
    """Every PNG, by section name -> file name."""
    images: dict[str, str] = {}
    layers, heads, T = explanation.attentions.shape[:3]
    panel = min(max(2.6, 0.14 * T), 8.0)
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    for layer in range(layers):
        fig = _figure(panel * cols + 0.6, panel * rows + 0.6)
        for head in range(heads):
            ax = fig.add_subplot(rows, cols, head + 1)
            ax.imshow(explanation.attentions[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"head {head}", fontsize=9)
            # Labels on the outer panels only: every panel shares the same tokens.
            _ticks(ax, explanation.tokens, rows=head % cols == 0, cols=head + cols >= heads)
        fig.suptitle(f"layer {layer}: attention weights (rows: queries, columns: keys)")
        fig.tight_layout()
        name = f"attention_layer_{layer:02d}.png"
        fig.savefig(folder / name)
        images[f"layer {layer}"] = name

    fig = _figure(panel + 2.0, panel + 1.0)
    ax = fig.add_subplot()
    shown = ax.imshow(explanation.rollout, cmap="magma", vmin=0.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("attention rollout over all layers")
    _ticks(ax, explanation.tokens)
    fig.tight_layout()
    fig.savefig(folder / "rollout.png")
    images["rollout"] = "rollout.png"

    lens = explanation.lens
    if lens is not None:
        fig = _figure(min(max(5.0, 0.5 * T + 2.0), 40.0), 0.5 * len(lens.tokens) + 2.0)
        ax = fig.add_subplot()
        shown = ax.imshow(lens.probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="top token's probability")
        if T <= _LABELLED_TOKENS:
            for layer, row in enumerate(lens.tokens):
                for position, token in enumerate(row):
                    dark = lens.probs[layer, position] > 0.6
                    ax.text(
                        position,
                        layer,
                        _label(token),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if dark else "black",
                    )
        _ticks(ax, explanation.tokens, rows=False)
        ax.set_yticks(range(len(lens.tokens)), labels=_layer_names(len(lens.tokens)), fontsize=7)
        ax.set_title(f"logit lens: each layer's top prediction of {lens.reads}")
        fig.tight_layout()
        fig.savefig(folder / "logit_lens.png")
        images["lens"] = "logit_lens.png"
    return images


def _layer_names(count: int) -> list[str]:
    return ["embeddings", *(f"after layer {i}" for i in range(count - 1))]


def _coloured(tokens: Sequence[str], values: Sequence[float | None], *, signed: bool) -> str:
    """Tokens as spans whose background deepens with |value| (blue above zero, orange below when
    `signed`), the value in each span's tooltip."""
    known = [abs(v) for v in values if v is not None and math.isfinite(v)]
    top = max(known, default=0.0) or 1.0
    spans = []
    for token, value in zip(tokens, values):
        if value is None or not math.isfinite(value):
            spans.append(f'<span title="no value">{html.escape(_printable(token))}</span>')
            continue
        strength = min(abs(value) / top, 1.0)
        rgb = "230,120,20" if signed and value < 0 else "30,100,220"
        spans.append(
            f'<span style="background: rgba({rgb},{0.85 * strength:.3f})" '
            f'title="{value:+.4f}">{html.escape(_printable(token))}</span>'
        )
    return '<div class="tokens">' + "".join(spans) + "</div>"


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def _page(explanation: Explanation, images: dict[str, str]) -> str:
    e = explanation
    T = len(e.ids)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # The page may load its own images and nothing else, whatever a token's text holds.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "img-src 'self' data:; style-src 'unsafe-inline'\">",
        # An empty icon: the browser asks for no /favicon.ico, so the page makes no request of
        # its own beyond its images.
        '<link rel="icon" href="data:,">',
        f"<title>graft explain: {html.escape(e.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>graft explain: {html.escape(e.title)}</h1>",
        f"<p>A {html.escape(e.kind)}, {len(e.attentions)} layers of "
        f"{e.attentions.shape[1]} heads, reading {T} tokens.</p>",
    ]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in e.notes]
    parts += [
        "<h2>The text as the model read it</h2>",
        _coloured(e.tokens, [0.0] * T, signed=False),
    ]

    if e.attribution is not None:
        a = e.attribution
        verdict = "within 1%" if a.completeness_error <= 0.01 else "more than 1% off"
        parts += [
            "<h2>Token attribution (integrated gradients)</h2>",
            f"<p>The model predicts <b>{html.escape(a.predicted)}</b>; the attributions are for "
            f"<b>{html.escape(a.label)}</b>. Each token's share of that label's logit, measured "
            "from a baseline where every token embedding is zero (positions and token types "
            f"kept), over {a.steps} trapezoid steps.</p>",
            _coloured(e.tokens, a.scores, signed=True),
            '<p class="legend">Blue pushes towards the label, orange away from it; hover a token '
            "for its value.</p>",
            f"<p>Completeness: the attributions sum to {a.total:+.5f}; the logit moved "
            f"{a.gap:+.5f} (from {a.baseline_logit:+.5f} at the baseline to {a.logit:+.5f}): "
            f"{100 * a.completeness_error:.3f}% apart, {verdict}.</p>",
        ]

    if e.surprisal is not None:
        known = [v for v in e.surprisal if v is not None]
        mean = sum(known) / len(known) if known else float("nan")
        summary = (
            f"mean {mean:.3f} nats (perplexity {math.exp(mean):.2f})"
            if known
            else "a single token: nothing to predict"
        )
        parts += [
            "<h2>Per-token loss</h2>",
            "<p>How much each token surprised the model: -ln p(token | the tokens before it), "
            f"in nats; {summary}. The first token has nothing before it.</p>",
            _coloured(e.tokens, e.surprisal, signed=False),
        ]

    parts += ["<h2>Attention rollout</h2>"]
    read = np.asarray(e.rollout)[e.read_at].mean(axis=0)
    where = "every position" if len(e.read_at) > 1 else f"position {e.read_at[0]}"
    parts += [
        "<p>Heads averaged, the residual connection added as the identity, rows renormalised, "
        "the layers multiplied through (Abnar &amp; Zuidema 2020). Below: how much each token "
        f"reaches {where}, where the model's prediction is read.</p>",
        _coloured(e.tokens, read.tolist(), signed=False),
        _img(images["rollout"], "attention rollout"),
    ]

    if e.lens is not None:
        lens = e.lens
        header = "".join(f"<th>{html.escape(n)}</th>" for n in _layer_names(len(lens.tokens)))
        rows = []
        for position in range(T):
            cells = "".join(
                f'<td style="background: rgba(30,100,220,{0.6 * lens.probs[layer, position]:.3f})"'
                f' title="p = {lens.probs[layer, position]:.3f}">'
                f"{html.escape(_label(lens.tokens[layer][position]))}</td>"
                for layer in range(len(lens.tokens))
            )
            rows.append(
                f"<tr><th>{position}: {html.escape(_label(e.tokens[position]))}</th>{cells}</tr>"
            )
        parts += [
            "<h2>Logit lens</h2>",
            "<p>Each layer's residual stream read through the final norm and the LM head: its "
            f"top prediction of {html.escape(lens.reads)}, shaded by probability.</p>",
            _img(images["lens"], "logit lens"),
            f"<table><tr><th>position: token</th>{header}</tr>{''.join(rows)}</table>",
        ]

    parts += ["<h2>Attention maps</h2>", "<p>One grid per layer, one panel per head.</p>"]
    for layer in range(len(e.attentions)):
        parts += [f"<h3>Layer {layer}</h3>", _img(images[f"layer {layer}"], f"layer {layer}")]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
