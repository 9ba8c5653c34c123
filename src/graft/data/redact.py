"""Sensitive text: finding it, then masking it or replacing it with consistent fakes.

This module owns the answer to "which spans of a text are personal or secret, and what goes in
their place". The kinds (KINDS): e-mail addresses; phone numbers (international `+CC`, national
with a leading 0, North American); payment-card numbers (13-19 digits, Luhn-checked); IBANs
(ISO 7064 mod-97, and the country's length where known); IPv4 and IPv6 addresses (checked by
`ipaddress`); URLs carrying `user:password@` credentials, replaced whole, since a host and path
next to a password are as telling as the password; and names from a list the user gives.
Patterns and checksums are tuned to leave prose alone: years, dates, times and prices are not
phone numbers. Where detectors overlap, the spans merge into one, replaced once as the kind
that ranks first (URL, e-mail, IBAN, card, IP, phone, name: a Luhn-valid card beats the
phone number inside it).

`mask` writes the kind in brackets (`[EMAIL]`). `pseudonym` writes a fake of the same kind taken
from a BLAKE2b hash, keyed by the seed, of the normalised original: one original always gets one
fake for one seed (case and separators aside), and a rerun writes the same text. Different
originals almost always get different fakes: a fake is drawn from a large space (a name word is
one of 70**5, about 1.7e9; most kinds have 10**10 values or more), but two can meet by chance,
most easily IPv4 fakes, which have the 2**24 addresses of 240.0.0.0/8 (1,000 distinct
addresses share a fake with a chance of about 3%). Fakes have reserved shapes:
`user-<hex>@example.invalid`, phones `+00-...` (no such country code), cards `0000...`
(Luhn-valid, no issuer), IBANs of country `XX`, IPs in 240.0.0.0/8 and 2001:db8::/32, URLs
`scheme://user-<hex>:<hex>@example.invalid` and made-up names. Detectors skip those shapes,
so a second pass over redacted text leaves it as it is. The seed is a key: whoever knows it can
test guesses of an original (phone numbers are few enough to try them all), so pseudonyms are
consistent, not secret, unless the seed is.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from graft.errors import ConfigError, DataError

__all__ = [
    "KINDS",
    "Match",
    "RedactConfig",
    "RedactionReport",
    "Redactor",
    "iban_remainder",
    "luhn_valid",
    "read_names",
]

Kind = Literal["email", "phone", "card", "iban", "ip", "url_credentials", "name"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Mode = Literal["mask", "pseudonym"]
MODES: tuple[Mode, ...] = get_args(Mode)
Span = tuple[int, int]

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,24}(?![\w-])")
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:]+:[^\s/?#@]*@[^\s<>\"'\[\]]*")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:]|\.\d)")
_CARD = re.compile(r"(?<![\w.-])\d(?:[ -]?\d){12,18}(?!\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_PHONE = re.compile(
    r"(?<![\w+.,/-])(?<!\d )(?:"  # not the middle of a longer number
    r"\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?[ .-]?\d{1,12}(?:[ .-]\d{1,12}){0,5}"  # +CC ...
    r"|(?:\(0\d{1,4}\)|0\d{1,4})[ .-]?\d{2,10}(?:[ .-]\d{2,10}){0,3}"  # 0 or 00 prefixed
    r"|(?:1[ .-]?)?(?:\([2-9]\d\d\)[ .-]?|[2-9]\d\d[ .-])\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|[2-9]\d\d-\d{4}"  # 555-1234
    r")(?![\d/]|[.,-]\d)"
)
# A date at the start of a candidate ("01.02.2023 12") makes it no phone number.
_DATE = re.compile(r"\(?\d{1,4}[./-]\d{1,2}[./-]\d{2,4}(?:\s|$)")
_TRAILING = ".,;:!?)'\""
# Lengths of the IBANs of common countries; others may be 15 to 34 characters long.
_IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "EE": 20,
    "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IS": 26,
    "IT": 27, "LT": 20, "LU": 20, "LV": 21, "MT": 31, "NL": 18, "NO": 15, "PL": 28, "PT": 25,
    "RO": 24, "SE": 24, "SI": 19, "SK": 24,
}  # fmt: skip
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
# Syllables in a fake name's word: 70**5, about 1.7e9 words, so two names of a list of
# thousands share a fake only by a rare accident (three syllables, 343,000 words, did not).
_NAME_SYLLABLES = 5
_FAKE_V4 = ipaddress.ip_network("240.0.0.0/8")
_FAKE_V6 = ipaddress.ip_network("2001:db8::/32")


def luhn_valid(digits: str) -> bool:
    """The Luhn check of payment-card numbers: every second digit from the right doubled."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (1 + position % 2)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def iban_remainder(iban: str) -> int:
    """ISO 7064 mod-97 of an IBAN (1 for a valid one): the first four characters moved to the
    end, letters as 10..35."""
    return int("".join(str(int(char, 36)) for char in iban[4:] + iban[:4])) % 97


def _digits(text: str) -> str:
    return "".join(char for char in text if char.isdigit())


def _valid_iban(text: str) -> bool:
    iban = text.replace(" ", "")
    expected = _IBAN_LENGTHS.get(iban[:2])
    right_length = len(iban) == expected if expected else 15 <= len(iban) <= 34
    return right_length and iban_remainder(iban) == 1


def _valid_card(text: str) -> bool:
    digits = _digits(text)
    # No issuer number starts with 0; fakes start with 0000 (found, to be left alone).
    issued = text[0] != "0" or digits.startswith("0000")
    return issued and 13 <= len(digits) <= 19 and luhn_valid(digits)


def _valid_phone(text: str) -> bool:
    count = len(_digits(text))
    if _DATE.match(text):
        return False
    if text.startswith("+"):
        return 8 <= count <= 15
    national = text.lstrip("(")
    if national.startswith("00"):
        return 10 <= count <= 15
    if national.startswith("0"):
        return 9 <= count <= 12
    return count in (7, 10, 11)


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _checked(
    pattern: re.Pattern[str], valid: Callable[[str], bool], text: str, *, trim: bool = False
) -> Iterator[Span]:
    """Spans of `pattern` that pass `valid`; with `trim`, a failing span is searched for the
    longest valid run of its space- or dash-separated groups (a card next to other numbers)."""
    for match in pattern.finditer(text):
        start, end = match.span()
        if valid(text[start:end]):
            yield start, end
        elif trim:
            cuts = [i for i in range(start, end) if text[i] in " -"]
            runs = [(s, e) for s in [start, *(i + 1 for i in cuts)] for e in [*cuts, end] if s < e]
            best = [run for run in runs if valid(text[run[0] : run[1]])]
            if best:
                yield max(best, key=lambda run: run[1] - run[0])


def _urls(text: str) -> Iterator[Span]:
    for match in _URL.finditer(text):
        yield match.start(), match.start() + len(match.group().rstrip(_TRAILING))


# In order of precedence where spans overlap; names come last.
_DETECTORS: dict[Kind, Callable[[str], Iterator[Span]]] = {
    "url_credentials": _urls,
    "email": lambda text: (m.span() for m in _EMAIL.finditer(text)),
    "iban": lambda text: _checked(_IBAN, _valid_iban, text, trim=True),
    "card": lambda text: _checked(_CARD, _valid_card, text, trim=True),
    "ip": lambda text: (
        span
        for pattern in (_IPV4, _IPV6)
        for span in _checked(pattern, lambda s: _valid_ip(s) and any(c.isalnum() for c in s), text)
    ),
    "phone": lambda text: _checked(_PHONE, _valid_phone, text, trim=True),
}


def _is_fake(kind: Kind, original: str) -> bool:
    """Whether `original` has the reserved shape of this module's fakes of `kind`."""
    if kind in ("email", "url_credentials"):
        return original.lower().endswith("@example.invalid")
    if kind == "phone":
        return original.startswith("+00")
    if kind == "iban":
        return original.startswith("XX")
    if kind == "card":
        return original.startswith("0")
    if kind == "ip":
        address = ipaddress.ip_address(original)
        return address in (_FAKE_V4 if address.version == 4 else _FAKE_V6)
    return False


def _names_pattern(names: Sequence[str]) -> re.Pattern[str] | None:
    # Longest first, so that "Anna Maria" is taken before "Anna"; a name may break over one
    # line end, as names do in wrapped text.
    words = sorted({" ".join(name.split()) for name in names if name.strip()}, key=len)[::-1]
    gap = r"(?=\s)[^\S\n]*\n?[^\S\n]*"
    alternatives = [gap.join(map(re.escape, name.split())) for name in words]
    if not alternatives:
        return None
    return re.compile(rf"(?<!\w)(?:{'|'.join(alternatives)})(?!\w)", re.IGNORECASE)


def read_names(path: Path) -> tuple[str, ...]:
    """The names in a UTF-8 file, one per line (blank lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the names file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: the names file is not UTF-8 ({exc.reason})") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise DataError(f"{path}: no names; expected one name per line")
    return names


@dataclass(frozen=True)
class RedactConfig:
    """What to redact and how; `names` are the names the `name` kind looks for."""

    kinds: tuple[Kind, ...]
    mode: Mode = "mask"
    seed: int = 0
    names: tuple[str, ...] = ()

    @classmethod
    def from_options(
        cls,
        kinds: str | Iterable[str],
        *,
        names_file: Path | None = None,
        mode: str = "mask",
        seed: int = 0,
        option: str = "--redact",
    ) -> RedactConfig | None:
        """Settings from user options: `kinds` a comma list or items (`all`: every kind), a
        names file (which adds the `name` kind); None when nothing is to be redacted. `option`
        names the setting in errors."""
        items = kinds.split(",") if isinstance(kinds, str) else list(kinds)
        wanted = {item.strip() for item in items if item.strip()}
        unknown = sorted(wanted - {*KINDS, "all"})
        if unknown:
            choices = ", ".join(KINDS)
            raise ConfigError(f"{option}: unknown kind {unknown[0]!r}; choose from {choices}, all")
        if mode not in MODES:
            raise ConfigError(f"{option}: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        if names_file is not None:
            wanted.add("name")
        elif "name" in wanted:
            # --redact pairs with --redact-names, data.redact with data.redact_names.
            flag = f"{option}-names" if option.startswith("--") else f"{option}_names"
            raise ConfigError(f"{option}: the name kind needs a file of names ({flag})")
        if not wanted:
            return None
        chosen = tuple(kind for kind in KINDS if kind in wanted or "all" in wanted)
        names = read_names(names_file) if names_file is not None else ()
        return cls(chosen, mode, seed, names)


@dataclass(frozen=True)
class Match:
    """One span of sensitive text: its kind, where it is, and what it says."""

    kind: Kind
    start: int
    end: int
    original: str


@dataclass
class RedactionReport:
    """How many spans of each kind were replaced, over all the texts a Redactor saw."""

    mode: Mode
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "counts": dict(self.counts)}


class Redactor:
    """Finds the configured kinds in texts and replaces them, counting into `report`."""

    def __init__(self, config: RedactConfig) -> None:
        self.config = config
        self.report = RedactionReport(config.mode, {kind: 0 for kind in config.kinds})
        self._key = hashlib.blake2b(str(config.seed).encode(), digest_size=32).digest()
        detectors = dict(_DETECTORS)
        pattern = _names_pattern(config.names) if "name" in config.kinds else None
        if pattern is not None:
            names = pattern
            detectors["name"] = lambda text: (m.span() for m in names.finditer(text))
        # In the order of _DETECTORS: the first kind of overlapping spans names the merged one.
        self._detectors = [
            (kind, detect) for kind, detect in detectors.items() if kind in config.kinds
        ]

    def find(self, text: str) -> list[Match]:
        """The sensitive spans of `text` in order, overlapping detections merged into one."""
        found: list[tuple[int, int, int]] = []
        fakes: list[Span] = []
        for rank, (kind, detect) in enumerate(self._detectors):
            for start, end in detect(text):
                if _is_fake(kind, text[start:end]):
                    fakes.append((start, end))
                else:
                    found.append((start, end, rank))
        # A fake's parts (the digits of an XX IBAN) are no new findings.
        found = [f for f in found if not any(f[0] < e and s < f[1] for s, e in fakes)]
        merged: list[list[int]] = []
        for start, end, rank in sorted(found):
            if merged and start < merged[-1][1]:
                last = merged[-1]
                last[1], last[2] = max(last[1], end), min(last[2], rank)
            else:
                merged.append([start, end, rank])
        return [Match(self._detectors[r][0], s, e, text[s:e]) for s, e, r in merged]

    def redact(self, text: str) -> str:
        """`text` with every sensitive span replaced."""
        return self._apply(text, self.find(text))

    def _apply(self, text: str, matches: Sequence[Match]) -> str:
        parts: list[str] = []
        last = 0
        for match in matches:
            parts += [text[last : match.start], self.replacement(match.kind, match.original)]
            self.report.counts[match.kind] += 1
            last = match.end
        parts.append(text[last:])
        return "".join(parts)

    def redact_words(self, words: Sequence[str]) -> tuple[str, ...]:
        """Redact a tokenized sentence word by word, keeping one word per word (for tags that
        stay aligned): spans are found in the words joined by spaces, so a phone number over two
        words is still found, and each word is replaced in the part a span covers."""
        text = " ".join(words)
        starts = [0]
        for word in words[:-1]:
            starts.append(starts[-1] + len(word) + 1)
        edits: list[list[tuple[int, int, str]]] = [[] for _ in words]
        for match in self.find(text):
            self.report.counts[match.kind] += 1
            for i in range(bisect.bisect_right(starts, match.start) - 1, len(words)):
                start, end = max(match.start, starts[i]), min(match.end, starts[i] + len(words[i]))
                if start >= match.end:
                    break
                if start < end:
                    fake = self.replacement(match.kind, text[start:end])
                    edits[i].append((start - starts[i], end - starts[i], fake))
        redacted = list(words)
        for i, word_edits in enumerate(edits):
            for start, end, fake in reversed(word_edits):
                redacted[i] = redacted[i][:start] + fake + redacted[i][end:]
        return tuple(redacted)

    def redact_pieces(self, pieces: Iterable[str], hold: int = 1 << 22) -> Iterator[str]:
        """Redact a text streamed in pieces, as if it were whole. Text after the last blank
        line (else line end) waits for the next piece, as a span may go on there; what goes out
        ends at a gap between words outside any span, where documents are cut too (see
        graft.data.documents), so tokenizing the pieces still gives the tokens of the whole.
        Past `hold` characters with no line end, the text goes out up to its last word gap (a
        span across that gap would be missed), or whole when it has none."""
        carry = ""
        for piece in pieces:
            text = carry + piece
            full = len(text) > hold
            settled = len(text) if full else text.rfind("\n\n") + 1 or text.rfind("\n") + 1
            matches = self.find(text[:settled])
            cut = _word_gap(text, settled, matches) or (settled if full else 0)
            if cut:
                yield self._apply(text[:cut], [m for m in matches if m.end <= cut])
            carry = text[cut:]
        if carry:
            yield self.redact(carry)

    def replacement(self, kind: Kind, original: str) -> str:
        """What replaces `original`: `[KIND]`, or in pseudonym mode its fake."""
        if self.config.mode == "mask":
            return f"[{kind.upper()}]"
        key = _normalised(kind, original)
        digest = hashlib.blake2b(f"{kind}\0{key}".encode(), key=self._key, digest_size=32).digest()
        return _fake(kind, original, digest)


def _word_gap(text: str, limit: int, matches: Sequence[Match]) -> int:
    """The last space before `limit` with a non-space on each side, outside every match; 0 when
    there is none."""
    position = text.rfind(" ", 0, limit)
    while position > 0:
        inside = any(m.start < position < m.end for m in matches)
        if position + 1 < len(text) and not (
            inside or text[position - 1].isspace() or text[position + 1].isspace()
        ):
            return position
        position = text.rfind(" ", 0, position)
    return 0


def _normalised(kind: Kind, original: str) -> str:
    """What decides a fake: one e-mail in two cases, or one number in two layouts, is one."""
    if kind in ("phone", "card"):
        return _digits(original)
    if kind == "iban":
        return original.replace(" ", "").upper()
    if kind == "ip" and _valid_ip(original):
        return ipaddress.ip_address(original).compressed
    if kind in ("email", "name"):
        return " ".join(original.split()).casefold()
    return original


def _fake(kind: Kind, original: str, digest: bytes) -> str:
    """A fake of `kind` in a reserved shape (see the module docstring), drawn from `digest`."""
    # 2**256 is far above 10**60, so these 60 digits are as good as uniform.
    hexed, number = digest.hex(), str(int.from_bytes(digest, "big") % 10**60).zfill(60)
    if kind == "email":
        return f"user-{hexed[:10]}@example.invalid"
    if kind == "url_credentials":
        scheme = original.split("://")[0] if "://" in original else "https"
        return f"{scheme}://user-{hexed[:8]}:{hexed[8:24]}@example.invalid"
    if kind == "phone":
        return f"+00-{number[:3]}-{number[3:6]}-{number[6:10]}"
    if kind == "card":
        length = len(_digits(original))
        body = "0000" + number[: (length if 13 <= length <= 19 else 16) - 5]
        digits = next(body + d for d in "0123456789" if luhn_valid(body + d))
        sep = " " if " " in original else "-" if "-" in original else ""
        return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    if kind == "iban":
        length = len(original.replace(" ", ""))
        body = number[: (length if 15 <= length <= 34 else 22) - 4]
        iban = f"XX{98 - iban_remainder('XX00' + body):02d}{body}"
        grouped = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
        return grouped if " " in original else iban
    if kind == "ip":
        if ":" in original:
            return "2001:db8:" + ":".join(hexed[i : i + 4] for i in range(0, 24, 4))
        return "240." + ".".join(str(byte) for byte in digest[:3])
    # One fake word per word of the name, each from its own 8 bytes of a stream drawn from the
    # digest (so any number of words): 2**64 values onto 70**5 words leaves a bias below 1e-10.
    count = max(1, len(original.split()))
    stream = hashlib.shake_256(digest).digest(8 * count)
    words = []
    for i in range(count):
        value = int.from_bytes(stream[8 * i : 8 * i + 8], "big")
        syllables = []
        for _ in range(_NAME_SYLLABLES):
            value, index = divmod(value, len(_SYLLABLES))
            syllables.append(_SYLLABLES[index])
        words.append("".join(syllables).capitalize())
    return " ".join(words)
