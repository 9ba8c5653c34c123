"""Tests for graft.data.redact: planted sensitive text found exactly, ordinary text left alone,
reproducible pseudonyms, streaming, and redaction in `graft data prepare` and fine-tuning reads."""

from __future__ import annotations

import bisect
import ipaddress
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from graft.cli import main
from graft.config import DataConfig
from graft.data.documents import Document
from graft.data.records import read_conversations, read_labelled
from graft.data.redact import (
    KINDS,
    RedactConfig,
    Redactor,
    iban_remainder,
    luhn_valid,
    read_names,
)
from graft.data.shards import ShardIndex
from graft.data.tagged import read_tagged
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import ConfigError, DataError
from graft.objectives.base import Records
from graft.objectives.classify import ClassifyConfig

# The shared datasets sit beside the repository (../shared/data); tests skip where they are absent.
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
BOOK = DATA / "books" / "austen-pride-and-prejudice.txt"
SMS = DATA / "sms_spam" / "SMSSpamCollection"
NAMES = (
    "Anna Maria Kowalski", "Anna Maria", "Bartholomew Quince", "Ottilie Fairweather",
    "Ignatius Pemberton", "Rosalind Achterberg", "Evander Mwangi", "Philippa Oyelaran",
    "Casimir Delacroix", "Henrietta Vasquez", "Leopold Ashcombe", "Marguerite Okafor",
    "Thaddeus Lindqvist", "Seraphina Nakamura", "Ambrose Kettleworth", "Cordelia Fitzwilliam",
    "Octavius Brannigan", "Wilhelmina Castellanos", "Barnaby Thistlewood", "Ysolde Marchetti",
)  # fmt: skip
TEMPLATES = (
    "Please get in touch with {} before Friday.",
    "The details were {}, as agreed on the phone.",
    "I wrote it down ({}) and left it on the desk.",
    "According to the form, {} is what we have on file.",
    "Send everything to {} and wait for an answer.",
)
ALL_BUT_NAMES = tuple(kind for kind in KINDS if kind != "name")


def _luhn_complete(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _email(rng: random.Random) -> str:
    local = rng.choice(["j.doe", "mary_ann", "x+news", "k-lee", "bob"]) + _digits(rng, 3)
    domain = rng.choice(["example.com", "mail.co.uk", "uni-berlin.de", "post.example.org"])
    return f"{local}@{domain}"


def _phone(rng: random.Random) -> str:
    def d(n: int) -> str:
        return _digits(rng, n)

    area = rng.choice("23456789") + d(2)
    forms: list[Callable[[], str]] = [
        lambda: f"+44 7700 {d(6)}",
        lambda: f"+44 20 {d(4)} {d(4)}",
        lambda: f"+1 ({area}) {d(3)}-{d(4)}",
        lambda: f"+49 30 {d(8)}",
        lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"07{d(3)} {d(6)}",
        lambda: f"07{d(3)}-{d(3)}-{d(3)}",
        lambda: f"0161 {d(3)} {d(4)}",
        lambda: f"(020) {d(4)} {d(4)}",
        lambda: f"09{d(9)}",
        lambda: f"0044 20 {d(4)} {d(4)}",
        lambda: f"({area}) {d(3)}-{d(4)}",
        lambda: f"{area}-{d(3)}-{d(4)}",
        lambda: f"{area}.{d(3)}.{d(4)}",
        lambda: f"1-800-{d(3)}-{d(4)}",
        lambda: f"{area}-{d(4)}",
    ]
    return rng.choice(forms)()


def _card(rng: random.Random) -> str:
    prefix, length = rng.choice(
        [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
         ("6011", 16), ("35", 16), ("36", 14), ("62", 19)]
    )  # fmt: skip
    number = _luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))
    if length == 15 and rng.random() < 0.5:  # Amex's 4-6-5
        return f"{number[:4]} {number[4:10]} {number[10:]}"
    sep = rng.choice(["", " ", "-"])
    return sep.join(number[i : i + 4] for i in range(0, length, 4))


def _iban(rng: random.Random, check_offset: int = 0) -> str:
    country, length, letters = rng.choice(
        [("DE", 22, 0), ("GB", 22, 4), ("FR", 27, 0), ("ES", 24, 0), ("IT", 27, 1),
         ("NL", 18, 4), ("BE", 16, 0), ("CH", 21, 0), ("AT", 20, 0), ("PL", 28, 0)]
    )  # fmt: skip
    body = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(letters))
    body += _digits(rng, length - 4 - letters)
    check = (98 - iban_remainder(f"{country}00{body}") + check_offset) % 97 or 97
    iban = f"{country}{check:02d}{body}"
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4)) if rng.random() < 0.5 else iban


def _ipv4(rng: random.Random) -> str:
    first = rng.choice([n for n in range(1, 256) if n != 240])  # 240.0.0.0/8 holds the fakes
    return ".".join(
        str(n) for n in [first, *(rng.choice([rng.randrange(256), 0, 255]) for _ in "abc")]
    )


def _ipv6(rng: random.Random) -> str:
    groups = [rng.randrange(1 << 16) if rng.random() < 0.6 else 0 for _ in range(8)]
    groups[0] = rng.choice([0xFE80, 0x2A02, 0x2600, 0x2001])
    groups[1] = rng.randrange(0xDB9, 0xFFFF)  # outside 2001:db8::/32, the fakes' block
    address = ipaddress.IPv6Address(sum(g << (16 * (7 - i)) for i, g in enumerate(groups)))
    return address.exploded if rng.random() < 0.5 else address.compressed


def _url(rng: random.Random) -> str:
    scheme = rng.choice(["https", "postgres", "ftp", "redis", "mysql"])
    user = rng.choice(["admin", "deploy", "svc_reader"])
    password = rng.choice(["hunter2", "S3cr3t!x", "p%40ss", "correct-horse"])
    host = rng.choice(["db.internal.example.com:5432", "10.1.2.3", "files.example.net"])
    return f"{scheme}://{user}:{password}@{host}/{rng.choice(['', 'data', 'x?y=1'])}"


PLANTS: dict[str, tuple[int, Callable[[random.Random], str]]] = {
    "email": (50, _email),
    "phone": (50, _phone),
    "card": (50, _card),
    "iban": (30, _iban),
    "ip": (40, lambda rng: _ipv4(rng) if rng.random() < 0.75 else _ipv6(rng)),
    "url_credentials": (10, _url),
}


def planted(seed: int = 0) -> tuple[str, list[tuple[str, int, int, str]]]:
    """A text of ordinary sentences, one sensitive span each, and those spans."""
    rng = random.Random(seed)
    items = [(kind, make(rng)) for kind, (n, make) in PLANTS.items() for _ in range(n)]
    items += [("name", name) for name in NAMES if name != "Anna Maria"]
    items += [("name", "anna maria")]  # a shorter listed name, in another case
    items += [("ip", _ipv6(rng)) for _ in range(10 - sum(":" in o for k, o in items if k == "ip"))]
    rng.shuffle(items)
    text, spans = "", []
    for kind, original in items:
        before, after = rng.choice(TEMPLATES).split("{}")
        start = len(text) + len(before)
        text += before + original + after + rng.choice(["\n", " ", "\n\n"])
        spans.append((kind, start, start + len(original), original))
    return text, spans


def redactor(mode: str = "mask", seed: int = 0, kinds: tuple[str, ...] = KINDS) -> Redactor:
    return Redactor(RedactConfig(kinds, mode, seed, NAMES))


def test_every_planted_span_is_found_exactly_and_counted():
    text, spans = planted()
    assert sum(":" in o for k, *_, o in spans if k == "ip") >= 10
    found = [(m.kind, m.start, m.end, m.original) for m in redactor().find(text)]
    wanted = Counter(kind for kind, *_ in spans)
    recall = {
        kind: sum(s in found for s in spans if s[0] == kind) / n for kind, n in wanted.items()
    }
    print("recall per kind:", recall)
    missed = [s for s in spans if s not in found]
    extra = [f for f in found if f not in spans]
    assert (missed, extra) == ([], [])
    r = redactor()
    masked = r.redact(text)
    assert r.report.counts == {kind: wanted[kind] for kind in KINDS}
    assert not any(original in masked for *_, original in spans)
    assert masked.count("[PHONE]") == 50 and masked.count("[NAME]") == 20


@pytest.mark.parametrize(
    "text",
    [
        "The card 4111 1111 1111 1112 and 5500-0000-0000-0005 fail the Luhn check.",
        "Numbers 4532015112830367 and 1234 5678 9012 3456 are not cards.",
        "A wrong check digit: DE88 3704 0044 0532 0130 00 and GB83WEST12345698765432.",
        "GB82WEST1234569876543 is one character short.",
        "Not addresses: 999.1.1.1, 256.10.10.10, 1.2.3 and 12:30:45.",
        "On 2023-01-15, 15.01.2023, 01/02/2023 and 01.02.2023 12 people came.",
        "From 1811-1817, in 1990 and 2024, around 1990 2000 people; chapter 12, page 345.",
        "It cost $1,299.99, or £12.50, or 1.250.000 EUR, or € 3 500, a 12.5% rise.",
        "We met at 10:30, left at 9.30am and came back at 23:59; score 3-1, v1.2.3.",
        "Call me on ext. 4471 or in room 12345; John 3:16; ISBN 0-14-143951-8.",
    ],
)
def test_ordinary_numbers_are_left_alone(text):
    assert redactor(kinds=ALL_BUT_NAMES).find(text) == []


def _share_touched(text: str, r: Redactor) -> float:
    spans = r.find(text)
    starts = [m.start for m in spans]
    tokens = [token.span() for token in re.finditer(r"\S+", text)]
    touched = 0
    for start, end in tokens:
        i = bisect.bisect_left(starts, end) - 1
        touched += i >= 0 and spans[i].end > start
    return touched / len(tokens)


def test_fewer_than_one_percent_of_a_books_tokens_are_touched():
    if not BOOK.is_file():
        pytest.skip(f"{BOOK} is absent (the shared data folder is not mounted)")
    share = _share_touched(BOOK.read_text(encoding="utf-8"), redactor(kinds=ALL_BUT_NAMES))
    print(f"book tokens touched: {share:.5%}")
    assert share < 0.01


def test_sms_counts_are_reported():
    if not SMS.is_file():
        pytest.skip(f"{SMS} is absent (the shared data folder is not mounted)")
    r = redactor(kinds=ALL_BUT_NAMES)
    r.redact(SMS.read_text(encoding="utf-8"))
    print("SMS spans per kind:", r.report.counts)
    assert r.report.counts["phone"] > 0  # the spam in it gives premium-rate numbers


def test_pseudonyms_are_reproducible_consistent_and_keyed_by_the_seed():
    text, spans = planted(seed=1)
    once, again = redactor("pseudonym", 7).redact(text), redactor("pseudonym", 7).redact(text)
    assert once == again
    assert redactor("pseudonym", 8).redact(text) != once
    twice = "Write to Mary@Example.com; yes, mary@example.com. Or 07700 900123, 07700-900-123"
    r = redactor("pseudonym", 7)
    fakes = [r.replacement(m.kind, m.original) for m in r.find(twice + " or 07700 900124.")]
    assert fakes[0] == fakes[1] and fakes[0].endswith("@example.invalid")
    assert fakes[2] == fakes[3] != fakes[4] and fakes[2].startswith("+00-")
    # Distinct originals, distinct fakes; and every fake is of its kind but left alone after.
    originals = {(kind, original) for kind, *_, original in spans}
    assert len({r.replacement(k, o) for k, o in originals}) == len(originals)
    assert r.find(once) == [] and r.redact(once) == once


def test_thousands_of_names_get_distinct_fakes_of_five_syllable_words():
    # A --names list of 2,000 given names: with three syllables a word (343,000 words) eight
    # pairs of them shared a fake, and two people in one text became one.
    rng = random.Random(0)
    syllable = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiouy"]
    names = sorted({"".join(rng.sample(syllable, 3)).capitalize() for _ in range(2500)})[:2000]
    r = Redactor(RedactConfig(("name",), "pseudonym", 0, tuple(names)))
    fakes = [r.replacement("name", name) for name in names]
    assert len(set(fakes)) == len(names)
    assert all(re.fullmatch(r"([bdfgklmnprstvz][aeiou]){5}", f.lower()) for f in fakes)
    # One fake word per word, however many; the same original (in any case) the same fake.
    long_name = "Anna Maria de la Cruz y Ortega van der Berg"
    fake = r.replacement("name", long_name)
    assert len(fake.split()) == len(long_name.split()) and fake.istitle()
    assert r.replacement("name", long_name.upper()) == fake
    assert (
        Redactor(RedactConfig(("name",), "pseudonym", 0, tuple(names))).replacement(
            "name", long_name
        )
        == fake
    )


def test_fakes_have_valid_checksums():
    r = redactor("pseudonym")
    card = r.replacement("card", "4111 1111 1111 1111")
    assert card.startswith("0000 ") and luhn_valid(card.replace(" ", ""))
    iban = r.replacement("iban", "DE89370400440532013000")
    assert iban.startswith("XX") and len(iban) == 22 and iban_remainder(iban) == 1


def test_streamed_pieces_are_redacted_as_the_whole_text(tmp_path):
    text, _ = planted(seed=2)
    for body in (text, text.replace("\n", " ")):
        path = tmp_path / "doc.txt"
        path.write_text(body, encoding="utf-8")
        whole, streamed = redactor("pseudonym"), redactor("pseudonym")
        pieces = Document(source=str(path), path=path, size=path.stat().st_size).pieces(64)
        assert "".join(streamed.redact_pieces(pieces)) == whole.redact(body)
        assert streamed.report == whole.report


def test_tagged_words_keep_their_count_and_spans_over_two_words_are_found():
    words = ("Call", "Anna", "Maria", "on", "07700", "900123", "or", "x@y.org", ".")
    r = redactor()
    assert r.redact_words(words) == ("Call", "[NAME]", "[NAME]", "on", "[PHONE]", "[PHONE]",
                                     "or", "[EMAIL]", ".")  # fmt: skip
    assert r.report.counts["phone"] == 1 and r.report.counts["name"] == 1


def test_options_are_checked_with_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"--redact: unknown kind 'foo'; choose from email"):
        RedactConfig.from_options("email,foo")
    with pytest.raises(ConfigError, match=r"data.redact: the name kind needs .*data.redact_names"):
        RedactConfig.from_options(["name"], option="data.redact")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent.txt"))):
        RedactConfig.from_options("", names_file=tmp_path / "absent.txt")
    assert RedactConfig.from_options("") is None
    (tmp_path / "names.txt").write_text("Anna\n\n  Bo Li \n", encoding="utf-8")
    settings = RedactConfig.from_options("all", names_file=tmp_path / "names.txt")
    assert settings is not None and settings.kinds == KINDS
    assert read_names(tmp_path / "names.txt") == ("Anna", "Bo Li")


def test_data_prepare_redacts_before_tokenizing(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    secret = "Mail anna@example.com or call 07700 900123; card 4111 1111 1111 1111.\n"
    for i in range(4):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}. {secret}", encoding="utf-8")
    (tmp_path / "names.txt").write_text("Document\n", encoding="utf-8")
    out = tmp_path / "data"
    args = ["data", "prepare", str(corpus), "--tokenizer", "bytes", "--out", str(out)]
    # At 0.5 the coin deals out four documents whole (at 0.1 each would be split by position).
    args += ["--no-progress", "--val-fraction", "0.5"]
    assert main([*args, "--redact", "all", "--redact-names", str(tmp_path / "names.txt")]) == 0
    assert (
        "redacted (mask): email 4, phone 4, card 4, iban 0, ip 0, url_credentials 0, name 4"
        in capsys.readouterr().out
    )
    index = ShardIndex.load(out)
    counts = dict.fromkeys(KINDS, 4) | {"url_credentials": 0, "iban": 0, "ip": 0}
    assert index.redaction == {"mode": "mask", "counts": counts}
    text = "".join(
        bytes_tokenizer().decode(np.fromfile(out / f"{split}.bin", dtype=index.np_dtype).tolist())
        for split in ("train", "val")
    )
    assert text.count("[NAME] 1. Mail [EMAIL] or call [PHONE]; card [CARD].") == 1
    assert "anna@" not in text and "07700" not in text and "Document" not in text
    assert main(args) == 0  # without --redact: no redaction entry at all
    assert "redaction" not in json.loads((out / "index.json").read_text(encoding="utf-8"))


def test_finetuning_records_are_redacted_before_the_objective(tmp_path):
    assert {f.name for f in fields(Records)} - {"seed"} <= set(DataConfig.model_fields)
    rows = [
        {"text": f"row {i}: reach me at r{i}@example.org", "label": "ab"[i % 2]} for i in range(8)
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    records = Records(
        train_file=train, val_file=train, val_fraction=0.5, text_field="text",
        label_field="label", encoding="utf-8", skip_invalid=False, max_train_examples=None,
        seed=3, redact=("email",),
    )  # fmt: skip
    read, val, _ = records.train_and_val(read_labelled)
    assert [r.text for r in read] == [f"row {i}: reach me at [EMAIL]" for i in range(8)]
    task = ClassifyConfig(name="classify").build(
        records, bytes_tokenizer(), max_len=64, bidirectional=False
    )
    seen = [bytes_tokenizer().decode(ids) for ids in task.objective.train.ids]
    assert all("[EMAIL]" in s and "@example.org" not in s for s in seen)

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"instruction": "Email bo@x.org", "output": "Done."}) + "\n")
    pseudonyms = replace(records, train_file=chat, val_file=chat, redact_mode="pseudonym")
    conversations, _, _ = pseudonyms.train_and_val(read_conversations)
    assert conversations[0].messages[0].content.startswith("Email user-")

    conll = tmp_path / "tags.conll"
    conll.write_text("Call O\n07700 B-NUM\n900123 I-NUM\nnow O\n", encoding="utf-8")
    tagged = replace(records, train_file=conll, val_file=conll, redact=("phone",))
    sentences, _, _ = tagged.train_and_val(read_tagged)
    assert sentences[0].words == ("Call", "[PHONE]", "[PHONE]", "now")
    assert sentences[0].tags == ("O", "B-NUM", "I-NUM", "O")
