"""Tests for graft.data.records: reading labelled records in every format, splitting them, and
reading instruction records as conversations."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from graft.data.records import (
    Conversation,
    Message,
    TextRecord,
    read_conversations,
    read_labelled,
    read_polarity,
    stratified_split,
)
from graft.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

ROWS = [("ham", "see you at noon"), ("spam", "WIN a prize, now!"), ("ham", 'she said "ok"')]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def pairs(records: list[TextRecord]) -> list[tuple[str, str]]:
    return [(r.label, r.text) for r in records]


# -- formats ----------------------------------------------------------------------------------


def test_jsonl(tmp_path: Path) -> None:
    lines = [
        json.dumps({"label": label, "text": text, "id": i}) for i, (label, text) in enumerate(ROWS)
    ]
    path = write(tmp_path / "d.jsonl", "\ufeff" + lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    records, skipped = read_labelled(path)
    assert pairs(records) == ROWS and skipped == 0
    # The blank line 2 is not a record, but it still counts for line numbers.
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3", f"{path}:4"]


def test_json_array_with_other_field_names_and_integer_labels(tmp_path: Path) -> None:
    items = [{"sentence": "good film", "y": 1}, {"sentence": "bad film", "y": 0}]
    path = write(tmp_path / "d.json", json.dumps(items, indent=2))
    records, _ = read_labelled(path, text_field="sentence", label_field="y")
    assert pairs(records) == [("1", "good film"), ("0", "bad film")]
    assert [r.source for r in records] == [f"{path}#0", f"{path}#1"]


def test_csv_with_quotes_and_a_multiline_field(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.csv", 'label,text\nham,"hello, you"\nspam,"two\nlines"\nham,"say ""hi"""\n'
    )
    records, _ = read_labelled(path)
    assert pairs(records) == [("ham", "hello, you"), ("spam", "two\nlines"), ("ham", 'say "hi"')]
    # A record's line is where it starts.
    assert [r.source for r in records] == [f"{path}:2", f"{path}:3", f"{path}:5"]


def test_tsv_with_header_reads_quotes_literally(tmp_path: Path) -> None:
    body = "".join(f"{text}\t{label}\n" for label, text in ROWS)
    path = write(tmp_path / "d.tsv", "sentence\tlabel\r\n" + body)
    records, _ = read_labelled(path, text_field="sentence")
    assert pairs(records) == ROWS
    assert records[0].source == f"{path}:2"


@pytest.mark.parametrize("name", ["SMSSpamCollection", "spam.txt"])
def test_headerless_label_tab_text(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, "".join(f"{label}\t{text}\n" for label, text in ROWS))
    records, skipped = read_labelled(path)
    assert pairs(records) == ROWS and skipped == 0
    assert records[2].source == f"{path}:3"


def test_a_txt_file_that_is_not_label_tab_text_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "just some prose\nwith no labels\n")
    with pytest.raises(
        DataError, match=r"notes\.txt: cannot read a '\.txt' file as labelled records"
    ):
        read_labelled(path)


def test_other_encodings(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "label\ttext\npos\tcaf\xe9 cr\xe8me\n".encode("latin-1"))
    records, _ = read_labelled(path, encoding="latin-1")
    assert records[0].text == "café crème"


# -- errors: each names the file and the line (or index) -------------------------------------


def test_missing_field_names_the_fields_present(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"body": "b", "label": "y"}\n')
    # The hint names the command-line option, not read_labelled's argument: every command that
    # reads labelled records (graft finetune classify too) takes --text-field and --label-field.
    with pytest.raises(DataError) as err:
        read_labelled(path)
    assert str(err.value) == (
        f"{path}:2: missing field 'text' (fields: body, label); read another field with "
        "--text-field NAME"
    )
    with pytest.raises(DataError, match=r"; read another field with --label-field NAME$"):
        read_labelled(path, label_field="class")


def test_missing_field_in_a_json_array_names_the_index(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b"}]))
    with pytest.raises(DataError, match=r"d\.json#1: missing field 'label' \(fields: text\)"):
        read_labelled(path)


def test_missing_column_in_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "sentence,label\nhi,x\n")
    with pytest.raises(
        DataError, match=r"d\.csv:1: no column 'text' in the header \(columns: sentence, label\)"
    ) as err:
        read_labelled(path)
    assert str(err.value).endswith("; read another column with --text-field NAME")


def test_a_headerless_label_tab_text_file_named_tsv_is_told_to_be_named_txt(
    tmp_path: Path,
) -> None:
    """A .tsv has a header row; the SMS Spam Collection's layout saved as .tsv had its first
    record read as one, and the error did not say that such a file is read as .txt."""
    path = write(tmp_path / "sms.tsv", "".join(f"{label}\t{text}\n" for label, text in ROWS))
    with pytest.raises(DataError) as err:
        read_labelled(path)
    assert str(err.value) == (
        f"{path}:1: no column 'text' in the header (columns: ham, see you at noon); "
        "sms.tsv looks like label<TAB>text lines with no header row: name it sms.txt "
        "(a .tsv file starts with a header row naming its columns)"
    )
    # A header that only names other columns is told about the field options, not renaming.
    named = write(tmp_path / "named.tsv", "class\ttext\nham\tsee you\nspam\tWIN now\n")
    with pytest.raises(DataError, match=r"\(columns: class, text\); read another column with --l"):
        read_labelled(named)


@pytest.mark.parametrize(
    ("name", "content", "line"),
    [
        ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": "  ", "label": "y"}\n', 2),
        ("d.csv", "label,text\nx,fine\ny,\n", 3),
        ("d", "x\tfine\ny\t \n", 2),
    ],
)
def test_empty_text(tmp_path: Path, name: str, content: str, line: int) -> None:
    path = write(tmp_path / name, content)
    with pytest.raises(DataError, match=rf"{name}:{line}: empty text in field 'text'"):
        read_labelled(path)


def test_empty_label(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": " "}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: empty label in field 'label'"):
        read_labelled(path)


def test_wrong_field_type(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": ["a"], "label": "x"}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: field 'text' must be a string, got list"):
        read_labelled(path)


def test_bad_json_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n')
    with pytest.raises(
        DataError,
        match=r"d\.jsonl:2: invalid JSON "
        r"\(Expecting property name enclosed in double quotes at column 15\)",
    ):
        read_labelled(path)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '["a", "x"]\n')
    with pytest.raises(DataError, match=r"d\.jsonl:1: expected a JSON object, got a JSON list"):
        read_labelled(path)


def test_bad_json_array_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.json", '[\n  {"text": "a", "label": "x"},\n  {"text": "b" "label": "y"}\n]\n'
    )
    with pytest.raises(DataError, match=r"d\.json:3: invalid JSON \(Expecting ',' delimiter"):
        read_labelled(path)


def test_json_that_is_not_an_array(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '{"text": "a", "label": "x"}')
    with pytest.raises(
        DataError, match=r"d\.json: expected a JSON array of objects, got a JSON dict"
    ):
        read_labelled(path)


def test_wrong_field_count_on_a_label_tab_text_line(tmp_path: Path) -> None:
    path = write(tmp_path / "SMS", "ham\tfine\nspam\tone\ttab too many\n")
    with pytest.raises(
        DataError, match=r"SMS:2: expected 2 tab-separated fields \(label<TAB>text\), got 3"
    ):
        read_labelled(path)


def test_wrong_field_count_on_a_tsv_row(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "label\ttext\nx\tfine\ny\n")
    with pytest.raises(
        DataError, match=r"d\.tsv:3: expected 2 fields like the header \(label, text\), got 1"
    ):
        read_labelled(path)


def test_undecodable_bytes_suggest_an_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", b"label\ttext\nx\tfine\ny\tcaf\xe9\n")
    with pytest.raises(
        DataError,
        match=r"d\.tsv:3: byte 0xe9 is not valid utf-8; read it as latin-1 or as its own "
        r"encoding \(--encoding latin-1; graft finetune: --data\.encoding=latin-1\)",
    ):
        read_labelled(path)


def test_missing_file_and_no_records(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file"):
        read_labelled(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"empty\.jsonl: no valid records"):
        read_labelled(write(tmp_path / "empty.jsonl", "\n\n"))
    with pytest.raises(ConfigError, match="encoding 'klingon'"):
        read_labelled(write(tmp_path / "d.jsonl", "{}\n"), encoding="klingon")


# -- skipping invalid records ----------------------------------------------------------------


def test_skip_invalid_counts_every_kind_of_bad_record(tmp_path: Path) -> None:
    lines = [
        b'{"text": "good one", "label": "a"}',
        b'{"text": "no label"}',  # missing field
        b'{"text": "", "label": "a"}',  # empty text
        b"not json",
        b"[1, 2]",  # not an object
        b'{"text": "caf\xe9", "label": "a"}',  # not UTF-8
        b'{"text": "good two", "label": "b"}',
    ]
    path = write(tmp_path / "d.jsonl", b"\n".join(lines) + b"\n")
    records, skipped = read_labelled(path, skip_invalid=True)
    assert pairs(records) == [("a", "good one"), ("b", "good two")]
    assert skipped == 5
    assert records[1].source == f"{path}:7"


def test_skip_invalid_tsv_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "d", "ham\tfine\nbroken line\nspam\tok\n")
    records, skipped = read_labelled(path, skip_invalid=True)
    assert pairs(records) == [("ham", "fine"), ("spam", "ok")] and skipped == 1


def test_when_everything_is_skipped_the_first_problem_is_shown(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"body": "a", "label": "x"}\n{"body": "b", "label": "y"}\n')
    with pytest.raises(
        DataError,
        match=r"d\.jsonl: no valid records "
        r"\(2 invalid; the first: .*d\.jsonl:1: missing field 'text'",
    ):
        read_labelled(path, skip_invalid=True)


# -- the label<TAB>text decision and oversized records ----------------------------------------


def test_a_bad_first_line_of_label_tab_text_is_one_invalid_record(tmp_path: Path) -> None:
    path = write(tmp_path / "spam.txt", "a stray title line\nham\tsee you\nspam\tWIN\nham\tok\n")
    with pytest.raises(DataError, match=r"spam\.txt:1: expected 2 tab-separated fields"):
        read_labelled(path)
    records, skipped = read_labelled(path, skip_invalid=True)
    assert pairs(records) == [("ham", "see you"), ("spam", "WIN"), ("ham", "ok")]
    assert skipped == 1


def test_refusing_a_txt_file_says_why_it_is_not_label_tab_text(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.txt", "just some prose\nwith no labels\nham\tone tab\n")
    with pytest.raises(DataError) as caught:
        read_labelled(path, skip_invalid=True)
    message = str(caught.value)
    assert "2 of its first 3 non-blank lines are not label<TAB>text" in message
    assert "line 1: 1 tab-separated field" in message
    # The format just refused is not offered as one graft reads.
    assert "(no suffix or .txt)" not in message and "\n" not in message


def test_field_names_with_line_breaks_are_quoted_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"te\\nxt": "a", "label": "b"}\n')
    with pytest.raises(DataError, match=r"\(fields: label, 'te\\nxt'\)"):
        read_labelled(path)
    header = write(tmp_path / "d.csv", '"te\nxt",label\nx,y\n')
    with pytest.raises(DataError, match=r"\(columns: 'te\\nxt', label\)"):
        read_labelled(header)


LIMIT = 64
BIG = "x" * 100  # over LIMIT, and the record around it more so


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("d.jsonl", f'{{"text": "ok", "label": "a"}}\n{{"text": "{BIG}", "label": "b"}}\n', ":2"),
        ("d.json", f'[{{"text": "ok", "label": "a"}}, {{"text": "{BIG}", "label": "b"}}]', "#1"),
        ("d.csv", f"text,label\nok,a\n{BIG},b\n", ":3"),
        ("d.tsv", f"text\tlabel\nok\ta\n{BIG}\tb\n", ":3"),
        ("d.txt", f"a\tok\nb\t{BIG}\n", ":2"),
    ],
)
def test_an_oversized_record_is_invalid_in_every_format(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError, match=rf"{name}{where}: record longer than {LIMIT} char") as c:
        read_labelled(path, max_record_chars=LIMIT)
    assert "\n" not in str(c.value)
    records, skipped = read_labelled(path, skip_invalid=True, max_record_chars=LIMIT)
    assert pairs(records) == [("a", "ok")] and skipped == 1
    assert len(read_labelled(path)[0]) == 2  # the default limit is far above 100 characters


def test_csv_cells_past_the_csv_modules_own_limit_are_read(tmp_path: Path) -> None:
    import csv

    # The csv module refuses fields over 131,072 characters by default: the policy is graft's.
    big = "word " * 40_000
    path = write(tmp_path / "d.csv", f"text,label\n{big},a\nok,b\n")
    before = csv.field_size_limit()
    records, _ = read_labelled(path)
    assert [len(r.text) for r in records] == [len(big), 2]
    assert csv.field_size_limit() == before  # restored


def test_an_unclosed_csv_quote_is_an_oversized_record(tmp_path: Path) -> None:
    rows = "".join(f"row {i},a\n" for i in range(20))
    path = write(tmp_path / "d.csv", f'text,label\nok,a\n"never closed,b\n{rows}')
    with pytest.raises(DataError, match=rf"d\.csv:3: record longer than {LIMIT} characters"):
        read_labelled(path, max_record_chars=LIMIT)


def test_an_oversized_conversation_is_invalid(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "c.jsonl",
        [{"instruction": "Hi", "output": "Hello"}, {"instruction": BIG, "output": "ok"}],
    )
    with pytest.raises(DataError, match=rf"c\.jsonl:2: record longer than {LIMIT} characters"):
        read_conversations(path, max_record_chars=LIMIT)
    conversations, skipped = read_conversations(path, skip_invalid=True, max_record_chars=LIMIT)
    assert len(conversations) == 1 and skipped == 1


# -- polarity --------------------------------------------------------------------------------


def test_read_polarity(tmp_path: Path) -> None:
    pos = write(tmp_path / "p.pos", "a fine film , tr\xe8s bien\n\nsmart\n".encode("latin-1"))
    neg = write(tmp_path / "p.neg", b"dull\n")
    records = read_polarity(pos, neg)
    assert pairs(records) == [("pos", "a fine film , très bien"), ("pos", "smart"), ("neg", "dull")]
    assert records[1].source == f"{pos}:3"
    with pytest.raises(DataError, match=r"p\.pos:1: byte 0xe8 is not valid utf-8"):
        read_polarity(pos, neg, encoding="utf-8")


# -- stratified split ------------------------------------------------------------------------


def labelled(counts: dict[str, int]) -> list[TextRecord]:
    return [
        TextRecord(f"{label} {i}", label, f"mem:{label}:{i}")
        for label, n in counts.items()
        for i in range(n)
    ]


def test_stratified_split_keeps_label_proportions() -> None:
    records = labelled({"ham": 483, "spam": 75, "rare": 2, "once": 1})
    rest, held = stratified_split(records, 0.2, seed=3)
    assert sorted(rest + held, key=records.index) == records
    held_counts, counts = Counter(r.label for r in held), Counter(r.label for r in records)
    for label, n in counts.items():
        assert abs(held_counts[label] - 0.2 * n) <= 1, label
    assert held_counts["rare"] == 1 and held_counts["once"] == 0
    # Both lists keep the input order.
    assert rest == sorted(rest, key=records.index) and held == sorted(held, key=records.index)


def test_stratified_split_is_deterministic_and_seeded() -> None:
    records = labelled({"a": 50, "b": 30})
    assert stratified_split(records, 0.3, seed=1) == stratified_split(records, 0.3, seed=1)
    assert stratified_split(records, 0.3, seed=1) != stratified_split(records, 0.3, seed=2)


def test_stratified_split_of_a_label_does_not_depend_on_other_labels() -> None:
    alone = stratified_split(labelled({"a": 40}), 0.25, seed=0)[1]
    mixed = stratified_split(labelled({"b": 17, "a": 40}), 0.25, seed=0)[1]
    assert [r for r in mixed if r.label == "a"] == alone


def test_stratified_split_rejects_bad_fractions() -> None:
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="fraction must be between 0 and 1"):
            stratified_split(labelled({"a": 4}), fraction, seed=0)


# -- instruction records ---------------------------------------------------------------------


def jsonl(path: Path, items: list[object]) -> Path:
    return write(path, "".join(json.dumps(item) + "\n" for item in items))


def test_alpaca_records_become_one_user_and_one_assistant_turn(tmp_path: Path) -> None:
    items = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"instruction": "Say bye.", "output": "Bye."},
    ]
    path = write(tmp_path / "a.json", json.dumps(items, indent=2))
    conversations, skipped = read_conversations(path)
    assert skipped == 0
    assert [c.messages for c in conversations] == [
        (Message("user", "Add the numbers.\n\n2 and 3"), Message("assistant", "5")),
        (Message("user", "Say hi."), Message("assistant", "Hi!")),
        (Message("user", "Say bye."), Message("assistant", "Bye.")),
    ]
    assert [c.source for c in conversations] == [f"{path}#0", f"{path}#1", f"{path}#2"]


def test_chat_records_keep_their_turns(tmp_path: Path) -> None:
    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye.", "weight": 1},
    ]
    path = jsonl(tmp_path / "c.jsonl", [{"messages": turns}, {"instruction": "x", "output": "y"}])
    conversations, _ = read_conversations(path)
    assert conversations[0] == Conversation(
        messages=tuple(Message(t["role"], t["content"]) for t in turns), source=f"{path}:1"
    )
    assert conversations[1].source == f"{path}:2"


@pytest.mark.parametrize(
    "item, problem",
    [
        ({"instruction": "Say hi.", "output": ""}, "empty field 'output'"),
        ({"instruction": "  ", "output": "Hi"}, "empty field 'instruction'"),
        ({"instruction": "Say hi."}, "without field 'output'"),
        ({"instruction": "Say hi.", "input": 3, "output": "Hi"}, "field 'input' must be a string"),
        (
            {
                "messages": [
                    {"role": "tool", "content": "42"},
                    {"role": "assistant", "content": "ok"},
                ]
            },
            "messages\\[0\\] has unknown role 'tool'; expected one of system, user, assistant",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}]},
            "last message has role 'user'; expected 'assistant'",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
            "empty messages\\[1\\] content",
        ),
        ({"messages": [{"role": "user"}]}, "must be an object with 'role' and 'content'"),
        ({"messages": []}, "non-empty list"),
        ({"prompt": "Hi", "completion": "Hello"}, "expected an Alpaca record .* or a chat record"),
    ],
)
def test_bad_instruction_records_name_file_and_line(
    tmp_path: Path, item: dict[str, object], problem: str
) -> None:
    path = jsonl(tmp_path / "bad.jsonl", [{"instruction": "Fine.", "output": "Yes."}, item])
    with pytest.raises(DataError, match=f"bad.jsonl:2: .*{problem}") as caught:
        read_conversations(path)
    assert "\n" not in str(caught.value)
    conversations, skipped = read_conversations(path, skip_invalid=True)
    assert len(conversations) == 1 and skipped == 1


def test_bad_instruction_record_in_a_json_array_names_the_index(tmp_path: Path) -> None:
    items = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]
    path = write(tmp_path / "a.json", json.dumps(items))
    with pytest.raises(DataError, match=r"a\.json#1: empty field 'output'"):
        read_conversations(path)


def test_instruction_files_of_other_kinds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read a '.csv' file as instruction records"):
        read_conversations(write(tmp_path / "a.csv", "instruction,output\n"))
    with pytest.raises(DataError, match="no valid instruction records"):
        read_conversations(write(tmp_path / "a.jsonl", "\n"))
    with pytest.raises(DataError, match="not JSON|invalid JSON"):
        read_conversations(write(tmp_path / "b.jsonl", "{oops\n"))


# -- the real datasets -----------------------------------------------------------------------


def shared(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"shared dataset {relative} not found under {SHARED_DATA.resolve()}")
    return path


def test_reads_the_sms_spam_collection() -> None:
    records, skipped = read_labelled(shared("sms_spam/SMSSpamCollection"))
    assert skipped == 0 and len(records) == 5574
    assert Counter(r.label for r in records) == {"ham": 4827, "spam": 747}
    rest, held = stratified_split(records, 0.1, seed=0)
    assert Counter(r.label for r in held) == {"ham": 483, "spam": 75}


def test_reads_the_sentence_polarity_files() -> None:
    folder = "sentiment/rt-polaritydata"
    records = read_polarity(
        shared(f"{folder}/rt-polarity.pos"), shared(f"{folder}/rt-polarity.neg")
    )
    assert Counter(r.label for r in records) == {"pos": 5331, "neg": 5331}
    assert all(r.text.strip() for r in records)


def test_reads_the_instruction_data() -> None:
    conversations, skipped = read_conversations(shared("instructions/instruction-data.json"))
    assert skipped == 0 and len(conversations) == 1100
    assert all([m.role for m in c.messages] == ["user", "assistant"] for c in conversations)


def test_json_past_the_parsers_depth_or_a_huge_number_is_one_line(tmp_path: Path) -> None:
    # json.loads raises RecursionError past ~1,000 levels and ValueError for an integer of more
    # than 4,300 digits: a traceback, before this was caught.
    deep, huge = "[" * 100_000, "[" + "9" * 5_000 + "]"
    lines = write(tmp_path / "a.jsonl", f"{deep}\n{huge}\n" + '{"text": "ok", "label": "a"}\n')
    with pytest.raises(DataError, match=rf"^{lines}:1: JSON nested too deep or a number too long"):
        read_labelled(lines)
    records, skipped = read_labelled(lines, skip_invalid=True)
    assert pairs(records) == [("a", "ok")] and skipped == 2
    for text in (deep, huge):
        array = write(tmp_path / "b.json", text)
        with pytest.raises(DataError, match=rf"^{array}: JSON nested too deep or a number"):
            read_labelled(array)


def test_field_names_are_refused_for_a_label_tab_text_file(tmp_path: Path) -> None:
    path = write(tmp_path / "d.txt", "ham\thello there\nspam\twin money\n")
    with pytest.raises(DataError, match=r"d\.txt: a label<TAB>text file has no named fields"):
        read_labelled(path, text_field="body")
    assert len(read_labelled(path)[0]) == 2
