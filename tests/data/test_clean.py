"""Tests for graft.data.clean (normalisation, language, the Gopher quality rules), the redact
step, and `graft data clean|redact` on the command line."""

from __future__ import annotations

import io
import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from graft.cli import main
from graft.data.clean import (
    RULES,
    CleanConfig,
    CleanStage,
    QualityConfig,
    clean_text,
    identify_language,
    normalise_text,
    quality_failure,
)
from graft.data.corpus import STATS_SUFFIX, CorpusDoc, CorpusWriter, read_corpus, text_sha256
from graft.data.redact import RedactConfig
from graft.data.redact_stage import RedactStage
from graft.errors import ConfigError

PROSE = (
    "The library opened at nine, but a small crowd had already gathered on the steps by half "
    "past eight. Most of them were students with exams the following week, carrying bags of "
    "books and flasks of coffee, and a few were retired teachers who came every morning to read "
    "the newspapers in the quiet room on the first floor. When the doors finally opened, the "
    "librarian smiled at the regulars and reminded everyone that the reading room would close "
    "early on Friday for repairs to the roof."
)
SECOND = (
    "In the afternoon the weather changed. A cold wind came in from the sea, rattling the tall "
    "windows, and the lights in the reading room flickered twice before settling. Nobody seemed "
    "to mind; a boy in the corner kept working through his algebra problems, and an old man by "
    "the radiator fell asleep over a history of the railways."
)
GERMAN = (
    "Die Bibliothek öffnete um neun Uhr, aber schon um halb neun hatte sich eine kleine Menge "
    "auf der Treppe versammelt. Die meisten waren Studenten, die in der folgenden Woche "
    "Prüfungen hatten, und trugen Taschen voller Bücher und Thermoskannen mit Kaffee."
)
FRENCH = (
    "La bibliothèque ouvrait à neuf heures, mais une petite foule s'était déjà rassemblée sur "
    "les marches vers huit heures et demie. La plupart étaient des étudiants qui avaient des "
    "examens la semaine suivante et portaient des sacs remplis de livres."
)
Q = QualityConfig()


def _sentences(text: str) -> list[str]:
    return [s.strip() + "." for s in text.replace(";", ".").split(".") if s.strip()]


def _made_up_words(count: int, letters: int = 6, seed: int = 0) -> list[str]:
    """Distinct made-up words of exactly `letters` letters (no English stop word among them)."""
    rng = random.Random(seed)
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in "abc")] = None
    return [w[:letters] for w in words]


def _filler(count: int, seed: int) -> list[str]:
    return _made_up_words(count, seed=seed)


def _repeated_passage(words_repeated: int) -> str:
    """200 words of 6 letters (but for one "the" and one "of"), one line, with a passage of
    `words_repeated` words written twice: that passage's share of word characters is
    6 * words_repeated / 1193 for every n-gram length up to its own."""
    words = _made_up_words(198)
    body = words[: 198 - words_repeated]
    return " ".join(
        [*body[:words_repeated], "the", "of", *body[words_repeated:]] + body[:words_repeated]
    )


def _unit_repeats(unit: list[str], fillers: int, times: int) -> str:
    """`unit` written `times` times, each followed by `fillers` distinct made-up words."""
    words = iter(_filler(times * fillers, seed=9))
    parts = ["the", "of"]
    for _ in range(times):
        parts += unit + [next(words) for _ in range(fillers)]
    return " ".join(parts)


# One crafted document a rule, failing that rule first (with the QualityConfig changes given).
CRAFTED: dict[str, tuple[str, dict[str, Any]]] = {
    "word_count": ("Far too short to be a document of any use.", {}),
    "mean_word_length": (" ".join(["to be or not to be it is so"] * 7), {}),
    "symbol_ratio": (PROSE + " #news" * 10, {}),
    "bullet_lines": (
        "\n".join("• " + s for s in _sentences(PROSE + " " + SECOND)),
        {},
    ),
    "ellipsis_lines": (
        "\n".join(s + (".." if i % 2 else "") for i, s in enumerate(_sentences(PROSE + SECOND))),
        {},
    ),
    "alpha_words": (PROSE + " " + " ".join(str(1990 + i) for i in range(30)), {}),
    "stop_words": (" ".join(_made_up_words(60)), {}),
    "dup_lines": ("\n".join(_sentences(PROSE + " " + SECOND) + ["Share this page."] * 5), {}),
    "dup_line_chars": (
        "\n".join(_sentences(PROSE + " " + SECOND) + [_sentences(PROSE)[2]] * 2),
        {},
    ),
    "dup_paragraphs": (
        "\n\n".join(
            ["\n".join(_sentences(PROSE)), "\n".join(_sentences(SECOND))] + ["See below."] * 3
        ),
        {},
    ),
    "dup_paragraph_chars": (
        "\n\n".join([PROSE, SECOND, "One.", "Two more.", "And three.", "Four at last.", PROSE]),
        {"max_dup_line_chars": None},
    ),
    "top_2gram": (_unit_repeats(["golden", "meadow"], 1, 30), {}),
    "top_3gram": (_unit_repeats(["ash", "elm", "cottonwood"], 10, 6), {}),
    "top_4gram": (_unit_repeats(["ash", "elm", "oak", "yew"], 8, 6), {}),
    "dup_5gram": (_repeated_passage(40), {}),
    "dup_6gram": (_repeated_passage(29), {}),
    "dup_7gram": (_repeated_passage(27), {}),
    "dup_8gram": (_repeated_passage(25), {}),
    "dup_9gram": (_repeated_passage(23), {}),
    "dup_10gram": (_repeated_passage(21), {}),
}


def test_a_normal_paragraph_passes_every_rule() -> None:
    assert quality_failure(PROSE, "en", Q) is None
    assert quality_failure(PROSE + "\n\n" + SECOND, None, Q) is None
    assert set(CRAFTED) == set(RULES)


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_rejects_its_crafted_document(rule: str) -> None:
    text, changes = CRAFTED[rule]
    config = replace(Q, **changes)
    assert quality_failure(text, "en", config) == rule
    # Each rule can be turned off.
    if rule.startswith(("top_", "dup_")) and rule.endswith("gram"):
        n = int(rule.split("_")[1].removesuffix("gram"))
        name, first = ("max_top_ngram", 2) if rule.startswith("top") else ("max_dup_ngram", 5)
        limits = list(getattr(config, name))
        limits[n - first] = None
        turned_off: dict[str, Any] = {name: tuple(limits)}
        off = replace(config, **turned_off)
    else:
        name = {
            "word_count": "min_words",
            "mean_word_length": "min_mean_word_length",
            "alpha_words": "min_alpha_words",
            "stop_words": "min_stop_words",
        }.get(rule, "max_" + rule)
        turned_off = {name: None}
        off = replace(config, **turned_off)
    assert quality_failure(text, "en", off) != rule


def test_alpha_words_counts_only_alphabetic_characters_as_letters() -> None:
    # 50 words, 40 with a letter: at the limit. One more letterless token in place of a word
    # fails, whether it is digits or a numeral that "\w" counts as a word character.
    words = PROSE.split()[:40]
    numbers = [str(1990 + i) for i in range(11)]
    assert quality_failure(" ".join(words + numbers[:10]), "en", Q) is None
    for numeral in ("1999", "½", "²", "①", "Ⅻ", "(3/4)", "_"):
        text = " ".join(words[:39] + [numeral] * 11)
        assert quality_failure(text, "en", Q) == "alpha_words", numeral
    # A word holding any letter counts, wherever the letter is and whatever the script.
    holding = ["1990s", "½lb", "x²", "(née)", "東京", "№5", "Москва"]
    assert quality_failure(" ".join(words[:39] + holding + numbers[:4]), "en", Q) is None


def test_word_count_limits_both_ways_and_stop_words_are_english_only() -> None:
    assert quality_failure(PROSE, "en", QualityConfig(max_words=80)) == "word_count"
    assert quality_failure(PROSE, "en", QualityConfig(min_words=0, max_words=None)) is None
    long_words = " ".join(w * 2 for w in _made_up_words(60)) + " the of"
    assert quality_failure(long_words, "en", Q) == "mean_word_length"
    made_up = CRAFTED["stop_words"][0]
    assert quality_failure(made_up, "en", Q) == "stop_words"
    assert quality_failure(made_up, None, Q) == "stop_words"  # unknown language: applied
    assert quality_failure(made_up, "de", Q) is None


def test_rejections_are_counted_by_their_first_rule(tmp_path: Path) -> None:
    texts = [PROSE, SECOND + " " + PROSE, CRAFTED["word_count"][0], CRAFTED["dup_lines"][0]]
    texts += [CRAFTED["symbol_ratio"][0]] * 2 + ["  \n\x00\n "]
    docs = [CorpusDoc(text, "test", f"doc{i}") for i, text in enumerate(texts)]
    rejects = tmp_path / "rejects.jsonl"
    with CorpusWriter(rejects) as writer:
        stage = CleanStage(CleanConfig(workers=1), on_reject=writer.write)
        kept = list(stage(docs))
    assert [doc.location for doc in kept] == ["doc0", "doc1"]
    assert all(doc.lang == "en" and doc.meta["lang_score"] > 0.9 for doc in kept)
    assert stage.stats.rejected == {"symbol_ratio": 2, "word_count": 1, "dup_lines": 1, "empty": 1}
    assert stage.stats.docs_in == 7 and stage.stats.docs_out == 2
    assert stage.stats.bytes_out == sum(len(d.text.encode()) for d in kept)
    rejected = list(read_corpus(rejects))
    assert [(d.location, d.meta["rejected"]) for d in rejected] == [
        ("doc2", "word_count"),
        ("doc3", "dup_lines"),
        ("doc4", "symbol_ratio"),
        ("doc5", "symbol_ratio"),
        ("doc6", "empty"),
    ]


def test_no_quality_keeps_everything_but_empty_documents() -> None:
    docs = [CorpusDoc(t, "test", str(i)) for i, t in enumerate(["Short.", "#", "\t\n"])]
    stage = CleanStage(CleanConfig(quality=None, langid=False, workers=1))
    assert [d.text for d in stage(docs)] == ["Short.", "#"]
    assert stage.stats.rejected == {"empty": 1}


def test_ftfy_repairs_mojibake_and_leaves_quotes_and_wide_forms() -> None:
    assert normalise_text("cafÃ©") == "café"
    assert normalise_text("He said â€œyesâ€\x9d.") == "He said “yes”."
    assert normalise_text("It’s ﬁne: ＡＢＣ &amp; more") == "It’s fine: ＡＢＣ &amp; more"
    assert normalise_text("plain ascii \x1b[31mred\x1b[0m text") == "plain ascii red text"


def test_normalisation_nfc_controls_and_whitespace() -> None:
    decomposed = "Cafe\u0301 cre\u0300me"
    assert normalise_text(decomposed) == "Café crème"
    assert normalise_text(decomposed, repair=False) == "Café crème"
    messy = "\n\nline one   \r\nline\x00 two\x07\t(tab)\r\n\r\n\r\n\n\nline three\x0cpage\n\n"
    assert normalise_text(messy) == "line one\nline two\t(tab)\n\nline three\npage"
    assert normalise_text("    indented code\n        kept") == "    indented code\n        kept"
    for text in (messy, "cafÃ©", decomposed):
        assert normalise_text(normalise_text(text)) == normalise_text(text)


def test_language_identification_on_short_paragraphs() -> None:
    for text, code in ((PROSE, "en"), (SECOND, "en"), (GERMAN, "de"), (FRENCH, "fr")):
        lang, score = identify_language(text)
        assert lang == code and 0.9 < score <= 1.0
    result = clean_text(CleanConfig(langs=("en", "fr")), GERMAN)
    assert (result.lang, result.rejected) == ("de", "lang")
    assert clean_text(CleanConfig(langs=("en", "fr"), quality=None), FRENCH).rejected is None
    gibberish = clean_text(CleanConfig(min_lang_score=0.9, quality=None), "zq xv 12 kk")
    assert gibberish.rejected == "lang_score" and gibberish.lang_score is not None
    with pytest.raises(ConfigError, match="unknown language code 'english'"):
        CleanConfig(langs=("english",))
    with pytest.raises(ConfigError, match="need language identification"):
        CleanConfig(langs=("en",), langid=False)


def test_process_pool_and_one_process_give_the_same_output() -> None:
    texts = [
        PROSE,
        GERMAN,
        "cafÃ©  \r\n" + SECOND + " " + PROSE,
        FRENCH,
        *(t for t, _ in CRAFTED.values()),
    ]
    docs = [CorpusDoc(t, "test", f"doc{i}", meta={"i": i}) for i, t in enumerate(texts * 3)]
    config = CleanConfig(langs=("en", "de"), quality=QualityConfig(min_words=20), chunksize=4)
    one, pool = CleanStage(replace(config, workers=1)), CleanStage(replace(config, workers=2))
    assert list(one(docs)) == list(pool(docs))
    assert one.stats.rejected == pool.stats.rejected
    assert len(one.stats.rejected) >= 5 and one.stats.docs_out == 9  # 3 x PROSE, GERMAN, ...
    assert one.stats.notes["langs"] == pool.stats.notes["langs"]


def _write(path: Path, texts: list[str]) -> Path:
    with CorpusWriter(path) as writer:
        for i, text in enumerate(texts):
            writer.write(CorpusDoc(text, "test", f"doc{i}"))
    return path


def test_cli_clean_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    texts = [
        PROSE,
        GERMAN,
        _sentences(PROSE)[0],
        SECOND + " The cafÃ© was shut.",
        PROSE + " #x" * 12,
    ]
    source = _write(tmp_path / "in.jsonl", texts)
    earlier = [{"stage": "collect", "docs_in": 5, "docs_out": 5}]
    Path(f"{source}{STATS_SUFFIX}").write_text(json.dumps(earlier), encoding="utf-8")
    out, rejects = tmp_path / "clean.jsonl.zst", tmp_path / "rejects.jsonl"
    code = main(
        ["data", "clean", str(source), "--out", str(out), "--rejects", str(rejects)]
        + ["--lang", "en", "--min-words", "40", "--max-dup-ngram", "off"]
        + ["--max-top-ngram", "0.9,off,off", "--workers", "1", "--no-progress"]
    )
    assert code == 0
    kept = list(read_corpus(out))
    assert [(d.location, d.lang) for d in kept] == [("doc0", "en"), ("doc3", "en")]
    assert kept[1].text.endswith("The café was shut.")
    reasons = {d.location: d.meta["rejected"] for d in read_corpus(rejects)}
    assert reasons == {"doc1": "lang", "doc2": "word_count", "doc4": "symbol_ratio"}
    stats = json.loads(Path(f"{out}{STATS_SUFFIX}").read_text())
    assert [s["stage"] for s in stats] == ["collect", "clean"]
    assert stats[1]["docs_in"] == 5 and stats[1]["docs_out"] == 2
    assert stats[1]["rejected"] == {"lang": 1, "word_count": 1, "symbol_ratio": 1}
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("clean: 5 docs in, 2 out (40.0%)") and "MB/s" in line
    assert "1 lang" in line and line.endswith(str(out))
    # Bad input: one line naming the file and line.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"no text": 1}\n', encoding="utf-8")
    assert main(["data", "clean", str(bad), "--out", "-", "--strict", "--no-progress"]) == 2
    assert 'bad.jsonl:2: expected a "text" field' in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not a number
        main(["data", "clean", str(bad), "--out", "-", "--min-words", "x"])


def test_cli_redact_reads_stdin_and_writes_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        CorpusDoc("Mail anna@example.org or call +44 20 7946 0958.", "t", "a").to_json(),
        CorpusDoc("Nothing to hide here.", "t", "b").to_json(),
    ]
    stdin = io.TextIOWrapper(io.BytesIO("\n".join(lines).encode("utf-8")), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["data", "redact", "-", "--out", "-", "--workers", "1", "--no-progress"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in out] == ["Mail [EMAIL] or call [PHONE].", "Nothing to hide here."]
    assert out[0]["sha256"] == text_sha256(out[0]["text"])  # the hash of the redacted text


def test_redact_stage_counts_by_kind_and_pseudonyms_agree_across_workers() -> None:
    texts = [f"Write to bob{i % 3}@example.org about order {i}." for i in range(40)]
    docs = [CorpusDoc(t, "t", str(i)) for i, t in enumerate(texts)]
    config = RedactConfig.from_options("email,phone", mode="pseudonym", seed=7)
    assert config is not None
    one, pool = RedactStage(config, workers=1), RedactStage(config, workers=2, chunksize=8)
    first, second = list(one(docs)), list(pool(docs))
    assert first == second
    assert len({d.text.split()[2] for d in first}) == 3  # one fake for each address
    assert one.stats.notes["redactions"] == {"email": 40, "phone": 0}
    assert one.stats.notes["docs_changed"] == 40 and one.stats.docs_out == 40


@pytest.mark.parametrize(("name", "value"), [("min_words", "-5"), ("max_symbol_ratio", "nan")])
def test_a_negative_or_nan_threshold_is_refused(name: str, value: str) -> None:
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected a number >= 0, or off"):
        QualityConfig.option_type(name)(value)
    assert QualityConfig.option_type(name)("off") is None
