"""Cleaning collected documents: Unicode repair and normalisation, language identification,
and quality filters in the spirit of Gopher's (Rae et al. 2021, MassiveText, appendix A).

`CleanStage(config)(docs)` turns a stream of `CorpusDoc`s into the stream of the documents
that pass, each normalised and labelled with its language; `stage.stats` counts the dropped
ones by the name of the first rule they failed. The work on one document is the pure function
`clean_text`, so it runs in a process pool on every core (`CleanConfig.workers`).

Normalisation (`normalise_text`): mojibake and other broken Unicode repaired with ftfy, NFC,
line ends made `\\n`, control characters removed (tab and line end kept), trailing spaces cut
from every line, runs of blank lines made one blank line. ftfy is told to leave curly quotes,
full-width forms and HTML entities alone (see `_FTFY`).

Language (`lang`, an ISO 639-1 code from py3langid, whose model ships inside its wheel): read
off the first `lang_prefix` characters; with `langs` only those languages are kept (reason
`lang`), with `min_lang_score` only documents whose language has at least that probability
(reason `lang_score`; probabilities are normalised, so the score is in [0, 1]).

Quality rules, in the order they are tried; a document is dropped under the first it fails.
Words are the text's whitespace-separated tokens; "word characters" are those of the words
with leading and trailing punctuation cut (what the n-gram rules measure). The defaults are
Gopher's; a threshold of None (`off` on the command line) turns its rule off.

    word_count           min_words <= words <= max_words (50, 100000)
    mean_word_length     mean word length in [3, 10] characters
    symbol_ratio         "#" per word and "..." per word, each <= 0.1
    bullet_lines         share of lines starting with a bullet <= 0.9
    ellipsis_lines       share of lines ending with an ellipsis <= 0.3
    alpha_words          share of words with a letter >= 0.8
    stop_words           >= 2 of: the be to of and that have with (English or unknown only)
    dup_lines            share of lines that repeat an earlier line <= 0.3
    dup_line_chars       share of characters in such lines <= 0.2
    dup_paragraphs       likewise for paragraphs (blank-line separated) <= 0.3
    dup_paragraph_chars  <= 0.2
    top_2gram..top_4gram share of word characters in the most frequent word n-gram
                         <= 0.20, 0.18, 0.16
    dup_5gram..dup_10gram share of word characters in n-grams that repeat an earlier one
                         <= 0.15, 0.14, 0.13, 0.12, 0.11, 0.10
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple

import ftfy
import numpy as np

from graft.data.corpus import CorpusDoc, StageStats
from graft.data.stages import default_workers, ordered_map
from graft.errors import ConfigError

__all__ = [
    "RULES",
    "CleanConfig",
    "CleanStage",
    "Cleaned",
    "QualityConfig",
    "clean_text",
    "identify_language",
    "normalise_text",
    "quality_failure",
]

# ftfy's defaults, except: curly quotes stay curly (straightening them merges apostrophes with
# closing quotes and loses the open/close distinction), full-width forms stay (in CJK text they
# are the writer's choice, not an accident), and HTML entities stay (collect already decoded
# the HTML it read; a second unescape would change text that quotes an entity, like "&amp;"
# in a page about HTML). Ligatures (ﬁ) do become letters (fi): they are presentation forms
# from PDF extraction, and "ﬁnd" read as "find" loses nothing a reader sees. explain=False
# skips building the list of fixes applied, which nobody reads here.
_FTFY = ftfy.TextFixerConfig(
    uncurl_quotes=False,
    fix_character_width=False,
    unescape_html=False,
    fix_latin_ligatures=True,
    normalization="NFC",
    explain=False,
)
_LINE_BREAKS = re.compile("\r\n|[\r\x0b\x0c\x85\u2028\u2029]")
# C0 and C1 controls except tab and line end (the line breaks above went first).
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")

_PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~«»‹›“”„‘’‚…–—·•¡¿"
_BULLETS = ("•", "●", "○", "◦", "▪", "▫", "■", "□", "‣", "⁃", "∙", "◆", "◇", "►", "▶", "➢", "✓")
_ASCII_BULLETS = ("- ", "* ", "+ ")
_ELLIPSES = ("...", "…")
STOP_WORDS = frozenset(("the", "be", "to", "of", "and", "that", "have", "with"))
# Languages the stop-word rule applies to: English, and documents of no identified language.
_STOP_WORD_LANGS = (None, "en", "und")


def _off_or(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind`, or "off" for None (the rule is off)."""

    def parse(value: str) -> Any:
        if value.strip().lower() in ("off", "none"):
            return None
        number = kind(value)
        # Every threshold is a count or a share: a negative or NaN one turns no rule off, it
        # only makes the rule say something other than what was meant.
        if not math.isfinite(number) or number < 0:
            raise argparse.ArgumentTypeError(f"expected a number >= 0, or off; got {value!r}")
        return number

    parse.__name__ = kind.__name__
    return parse


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class QualityConfig:
    """The thresholds of the quality rules (the module docstring lists them); each default is
    Gopher's value. None turns a rule off; 0 does too for a minimum."""

    min_words: int | None = _option(50, "fewest words")
    max_words: int | None = _option(100_000, "most words")
    min_mean_word_length: float | None = _option(3.0, "shortest mean word length")
    max_mean_word_length: float | None = _option(10.0, "longest mean word length")
    max_symbol_ratio: float | None = _option(0.1, '"#" and "..." per word, each')
    max_bullet_lines: float | None = _option(0.9, "share of lines starting with a bullet")
    max_ellipsis_lines: float | None = _option(0.3, "share of lines ending with an ellipsis")
    min_alpha_words: float | None = _option(0.8, "share of words holding a letter")
    min_stop_words: int | None = _option(2, "of: the be to of and that have with")
    max_dup_lines: float | None = _option(0.3, "share of lines repeating an earlier one")
    max_dup_line_chars: float | None = _option(0.2, "share of characters in repeated lines")
    max_dup_paragraphs: float | None = _option(0.3, "share of repeated paragraphs")
    max_dup_paragraph_chars: float | None = _option(
        0.2, "share of characters in repeated paragraphs"
    )
    max_top_ngram: tuple[float | None, ...] = _option(
        (0.20, 0.18, 0.16), "for n = 2,3,4: share of the most frequent n-gram (comma list)"
    )
    max_dup_ngram: tuple[float | None, ...] = _option(
        (0.15, 0.14, 0.13, 0.12, 0.11, 0.10),
        "for n = 5..10: share in n-grams repeating an earlier one (comma list)",
    )

    def __post_init__(self) -> None:
        for name, size in (("max_top_ngram", 3), ("max_dup_ngram", 6)):
            if len(getattr(self, name)) != size:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{flag}: expected {size} comma-separated thresholds (each a number or "
                    "off), or one off for them all"
                )

    @staticmethod
    def option_type(name: str) -> Callable[[str], Any]:
        """The argparse type of field `name`: a number or `off`, or a comma list of them."""
        kind = int if name in ("min_words", "max_words", "min_stop_words") else float
        one = _off_or(kind)
        if name in ("max_top_ngram", "max_dup_ngram"):
            size = 3 if name == "max_top_ngram" else 6
            # A lone `off` turns every n of the rule off; otherwise one threshold an n.
            return lambda value: (
                (None,) * size
                if value.strip() == "off"
                else tuple(one(part) for part in value.split(","))
            )
        return one

    @staticmethod
    def option_help(name: str) -> str:
        (spec,) = (f for f in fields(QualityConfig) if f.name == name)
        default = spec.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        return f"{spec.metadata['help']} (default {shown}; off turns the rule off)"


# The rule names, in the order they are tried (the reasons a document is dropped for).
RULES: tuple[str, ...] = (
    "word_count",
    "mean_word_length",
    "symbol_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "alpha_words",
    "stop_words",
    "dup_lines",
    "dup_line_chars",
    "dup_paragraphs",
    "dup_paragraph_chars",
    *(f"top_{n}gram" for n in (2, 3, 4)),
    *(f"dup_{n}gram" for n in range(5, 11)),
)


@dataclass(frozen=True)
class CleanConfig:
    """What `clean` does: `normalise` (see normalise_text); `langid` labels each document's
    language from its first `lang_prefix` characters, `langs` keeps only those languages and
    `min_lang_score` only documents whose language has that probability; `quality` holds the
    rules' thresholds (None: no quality rules). `workers` processes (None: one a core; 1: this
    process), sent `chunksize` documents at a time."""

    normalise: bool = True
    langid: bool = True
    langs: tuple[str, ...] = ()
    min_lang_score: float = 0.0
    lang_prefix: int = 1000
    quality: QualityConfig | None = field(default_factory=QualityConfig)
    workers: int | None = None
    chunksize: int = 64

    def __post_init__(self) -> None:
        if (self.langs or self.min_lang_score > 0) and not self.langid:
            raise ConfigError("--lang and --min-lang-score need language identification")
        if not 0.0 <= self.min_lang_score <= 1.0:
            raise ConfigError(
                f"--min-lang-score: expected a probability in [0, 1], got {self.min_lang_score}"
            )
        if self.langs:
            known = set(_identifier().labels)
            unknown = [code for code in self.langs if code not in known]
            if unknown:
                raise ConfigError(
                    f"--lang: unknown language code {unknown[0]!r}; expected ISO 639-1 codes "
                    f"py3langid knows (en, de, fr, ...)"
                )
        if self.lang_prefix <= 0 or self.chunksize <= 0:
            raise ConfigError("lang_prefix and chunksize must be positive")


def _repair(text: str) -> str:
    """ftfy.fix_text, which fixes a text line by line, but skipping the lines it could not
    change: pure ASCII without terminal escapes (mojibake is never ASCII, and the control
    characters and line breaks it would fix there normalise_text fixes anyway). ftfy costs
    about 50 microseconds a line; most lines of most texts are ASCII."""
    if text.isascii() and "\x1b" not in text:
        return text
    return "\n".join(
        line if line.isascii() and "\x1b" not in line else ftfy.fix_text(line, _FTFY)
        for line in text.split("\n")
    )


def normalise_text(text: str, *, repair: bool = True) -> str:
    """`text` repaired (ftfy, unless `repair` is False) and normalised (see the module
    docstring); no further change on a second call."""
    text = _LINE_BREAKS.sub("\n", text)
    if repair:
        text = _repair(text)
    text = unicodedata.normalize("NFC", text)
    text = _CONTROLS.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


@functools.cache
def _identifier() -> Any:
    """py3langid's identifier with probabilities normalised to sum to 1 (once a process)."""
    from py3langid import langid  # type: ignore[import-untyped]

    # py3langid 0.4 names the loader from_model_file; 0.3 from_pickled_model.
    kind = langid.LanguageIdentifier
    load = getattr(kind, "from_model_file", None) or kind.from_pickled_model
    return load(langid.MODEL_FILE, norm_probs=True)


def identify_language(text: str, prefix: int = 1000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the language of `text`'s first `prefix` characters."""
    lang, score = _identifier().classify(text[:prefix])
    return str(lang), float(score)


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _above(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


def _duplicates(items: list[str]) -> tuple[float, float]:
    """(share of items repeating an earlier one, share of characters in those items)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return _ratio(count, len(items)), _ratio(chars, sum(map(len, items)))


class _Grams:
    """The word n-grams of a text as 64-bit hashes, for the repetition rules: numpy over word
    ids instead of a tuple per n-gram, several times faster on long documents."""

    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so that no id is lost mod 2**64

    def __init__(self, words: list[str]) -> None:
        ids: dict[str, int] = {}
        self.ids = np.array([ids.setdefault(w, len(ids)) for w in words], dtype=np.uint64)
        self.lengths = np.array([len(w) for w in words], dtype=np.int64)
        self.total = int(self.lengths.sum())
        self._hashes = self.ids.copy()  # 1-grams; extended one word at a time
        self._n = 1

    def hashes(self, n: int) -> np.ndarray:
        """One hash a position (len(words) - n + 1 of them); n never decreases between calls."""
        with np.errstate(over="ignore"):  # wrapping is the point
            while self._n < n:
                self._hashes = self._hashes[:-1] * self._MULTIPLIER + self.ids[self._n :] + 1
                self._n += 1
        return self._hashes

    def top_share(self, n: int) -> float:
        """Share of word characters in all occurrences of the most frequent n-gram, when it
        occurs more than once (among equally frequent ones, the longest)."""
        hashes = self.hashes(n)
        if len(hashes) < 2:
            return 0.0
        _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
        most = counts.max()
        if most < 2:
            return 0.0
        window = np.convolve(self.lengths, np.ones(n, dtype=np.int64), mode="valid")
        return _ratio(int(most) * int(window[first[counts == most]].max()), self.total)

    def dup_share(self, n: int) -> float:
        """Share of word characters covered by n-grams that repeat an earlier one (each word
        counted once however many repeats cover it)."""
        hashes = self.hashes(n)
        if len(hashes) < 2:
            return 0.0
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        starts = np.flatnonzero(first[inverse] != np.arange(len(hashes)))
        if not len(starts):
            return 0.0
        depth = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.add.at(depth, starts, 1)
        np.add.at(depth, starts + n, -1)
        covered = np.cumsum(depth[:-1]) > 0
        return _ratio(int(self.lengths[covered].sum()), self.total)


def quality_failure(text: str, lang: str | None, q: QualityConfig) -> str | None:
    """The name of the first quality rule `text` fails (see RULES), or None when it passes.
    `lang` decides whether the English stop-word rule applies."""
    tokens = text.split()
    count = len(tokens)
    if _below(count, q.min_words) or _above(count, q.max_words):
        return "word_count"
    words = [w for w in (t.strip(_PUNCTUATION) for t in tokens) if w]
    mean = _ratio(sum(map(len, words)), len(words))
    if _below(mean, q.min_mean_word_length) or _above(mean, q.max_mean_word_length):
        return "mean_word_length"
    hashes, ellipses = text.count("#"), text.count("...") + text.count("…")
    if _above(_ratio(max(hashes, ellipses), count), q.max_symbol_ratio):
        return "symbol_ratio"
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    bullets = sum(line.startswith(_BULLETS + _ASCII_BULLETS) for line in lines)
    if _above(_ratio(bullets, len(lines)), q.max_bullet_lines):
        return "bullet_lines"
    if _above(
        _ratio(sum(line.endswith(_ELLIPSES) for line in lines), len(lines)), q.max_ellipsis_lines
    ):
        return "ellipsis_lines"
    # A letter is what str.isalpha says: not "\w", which also takes numerals such as ½, ² and ①.
    # Most words start with a letter, so the test of the first character settles them cheaply.
    alpha = sum(t[0].isalpha() or any(map(str.isalpha, t)) for t in tokens)
    if _below(_ratio(alpha, count), q.min_alpha_words):
        return "alpha_words"
    lowered = [w.lower() for w in words]
    if lang in _STOP_WORD_LANGS and _below(len(STOP_WORDS.intersection(lowered)), q.min_stop_words):
        return "stop_words"
    share, chars = _duplicates(lines)
    if _above(share, q.max_dup_lines):
        return "dup_lines"
    if _above(chars, q.max_dup_line_chars):
        return "dup_line_chars"
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    share, chars = _duplicates(paragraphs)
    if _above(share, q.max_dup_paragraphs):
        return "dup_paragraphs"
    if _above(chars, q.max_dup_paragraph_chars):
        return "dup_paragraph_chars"
    grams = _Grams(lowered)
    for n, limit in zip((2, 3, 4), q.max_top_ngram, strict=True):
        if limit is not None and grams.top_share(n) > limit:
            return f"top_{n}gram"
    limits = list(zip(range(5, 11), q.max_dup_ngram, strict=True))
    for k, (n, limit) in enumerate(limits):
        if limit is None:
            continue
        share = grams.dup_share(n)
        if share > limit:
            return f"dup_{n}gram"
        # Words covered by repeated (n+1)-grams are covered by repeated n-grams, so the
        # share only falls with n: under every later limit, no later rule can fail.
        if all(share <= later for _, later in limits[k + 1 :] if later is not None):
            break
    return None


class Cleaned(NamedTuple):
    """What clean_text made of one text: the normalised text, its language and that
    language's probability (None without language identification), and the rule it failed
    (None when it passes)."""

    text: str
    lang: str | None
    lang_score: float | None
    rejected: str | None


def clean_text(config: CleanConfig, text: str) -> Cleaned:
    """Normalise `text`, identify its language and apply the filters: the work on one
    document, a pure function (so a process pool can run it)."""
    if config.normalise:
        text = normalise_text(text)
    if not text.strip():
        return Cleaned(text, None, None, "empty")
    lang: str | None = None
    score: float | None = None
    if config.langid:
        lang, score = identify_language(text, config.lang_prefix)
        if config.langs and lang not in config.langs:
            return Cleaned(text, lang, score, "lang")
        if score < config.min_lang_score:
            return Cleaned(text, lang, score, "lang_score")
    rule = quality_failure(text, lang, config.quality) if config.quality is not None else None
    return Cleaned(text, lang, score, rule)


def _text(doc: CorpusDoc) -> str:
    return doc.text


class CleanStage:
    """The `clean` step: `CleanStage(config)(docs)` yields the documents that pass, normalised
    and with `lang` set (and `lang_score` in meta); `stats` counts the dropped ones by rule.
    `on_reject` receives each dropped document with `meta["rejected"]` naming its rule."""

    def __init__(
        self,
        config: CleanConfig | None = None,
        *,
        on_reject: Callable[[CorpusDoc], None] | None = None,
    ) -> None:
        self.config = config or CleanConfig()
        self.on_reject = on_reject
        self.stats = StageStats("clean")

    def __call__(self, docs: Iterable[CorpusDoc]) -> Iterator[CorpusDoc]:
        config, stats = self.config, self.stats
        workers = default_workers(config.workers)
        langs: Counter[str] = Counter()
        changed = 0
        start = time.perf_counter()
        try:
            results = ordered_map(
                clean_text, config, docs, _text, workers=workers, chunksize=config.chunksize
            )
            for doc, result in results:
                stats.docs_in += 1
                stats.bytes_in += len(doc.text.encode("utf-8"))
                changed += result.text != doc.text
                meta = dict(doc.meta)
                if result.lang is not None:
                    langs[result.lang] += 1
                    meta["lang_score"] = round(float(result.lang_score or 0.0), 4)
                cleaned = replace(doc, text=result.text, lang=result.lang or doc.lang, meta=meta)
                if result.rejected is not None:
                    stats.rejected[result.rejected] += 1
                    if self.on_reject is not None:
                        cleaned.meta["rejected"] = result.rejected
                        self.on_reject(cleaned)
                    continue
                stats.docs_out += 1
                stats.bytes_out += len(cleaned.text.encode("utf-8"))
                yield cleaned
        finally:
            stats.seconds += time.perf_counter() - start
            stats.notes.update(
                normalised=changed,
                langs=dict(langs.most_common(20)),
                workers=workers,
            )
