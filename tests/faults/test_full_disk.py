"""A full disk during a checkpoint, an export and `graft data prepare`: one clear line, and the
previous output intact and still the one used.

The disk is "full" by RLIMIT_FSIZE: no file the command writes may grow past a limit, so the
write of a large file fails with EFBIG ("File too large") just as one on a full disk fails with
ENOSPC; both take the same path (graft.atomic_files.no_room). No mount or root is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from graft.checkpoint import saved_checkpoint, verify_checkpoint

Graft = Callable[..., int]  # the `graft` fixture of conftest.py
LIMIT = 200_000  # bytes: above every small file (configs, metrics, the loss curve), below weights
MODEL = ["--model.preset=nano", "--model.max_seq_len=32", "--model.d_model=64"]
MODEL += ["--model.n_layers=2", "--model.n_heads=2"]
TRAIN = ["--train.eval_every=2", "--train.eval_batches=1", "--train.progress=false"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_clear_line(log: Path, names: str) -> str:
    """The log's error: exactly one `graft: error:` line naming `names`, and no traceback."""
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("graft: error:")]
    assert "Traceback" not in text and len(errors) == 1, text
    assert names in errors[0] and "File too large" in errors[0], errors[0]
    assert "intact" in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def run(graft: Graft, bytes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with its checkpoint at step 2, made without a limit."""
    out = tmp_path_factory.mktemp("full_disk") / "run"
    args = ["pretrain", "--data", str(bytes_data), "--out", str(out), *MODEL, *TRAIN]
    assert graft([*args, "--train.max_steps=2"], out.parent / "first.log") == 0
    weights = out / "checkpoints" / "last" / "model.safetensors"
    assert weights.stat().st_size > LIMIT  # the next save cannot fit
    return out


def test_a_checkpoint_that_finds_no_room(
    graft: Graft,
    bytes_data: Path,
    run: Path,
    tmp_path: Path,
    tally: Callable[[str, str, int], None],
) -> None:
    before = snapshot(run / "checkpoints")
    args = ["pretrain", "--data", str(bytes_data), "--out", str(run), *MODEL, *TRAIN]
    code = graft([*args, "--train.max_steps=4", "--resume"], tmp_path / "log", fsize=LIMIT)
    assert code == 2
    tally("full disk", "trials", 1)
    one_clear_line(tmp_path / "log", str(run / "checkpoints"))  # best is written first
    tally("full disk", "one clear line", 1)
    last = saved_checkpoint(run)
    assert last == run / "checkpoints" / "last"
    verify_checkpoint(last)
    assert snapshot(run / "checkpoints") == before  # nothing half-written beside it either
    tally("full disk", "previous intact", 1)


def test_an_export_that_finds_no_room(
    graft: Graft, run: Path, tmp_path: Path, tally: Callable[[str, str, int], None]
) -> None:
    out = tmp_path / "hf"
    export = ["export", str(run / "checkpoints" / "last"), "--format", "hf", "--out", str(out)]
    assert graft([*export, "--no-verify"], tmp_path / "first.log") == 0
    before = snapshot(tmp_path)  # the export, with its folder's name
    code = graft([*export, "--no-verify", "--overwrite"], tmp_path / "log", fsize=LIMIT)
    assert code == 2
    tally("full disk", "trials", 1)
    one_clear_line(tmp_path / "log", str(out))
    tally("full disk", "one clear line", 1)
    assert snapshot(tmp_path / "hf") == {k[3:]: v for k, v in before.items() if k[:3] == "hf/"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    tally("full disk", "previous intact", 1)


def test_a_data_prepare_that_finds_no_room(
    graft: Graft, tmp_path: Path, tally: Callable[[str, str, int], None]
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a sentence of plain words to tokenize, again and again.\n" * 4000)
    out = tmp_path / "data"
    prepare = ["data", "prepare", str(corpus), "--tokenizer", "bytes", "--out", str(out)]
    assert graft([*prepare, "--no-progress"], tmp_path / "first.log") == 0
    assert (out / "train.bin").stat().st_size > LIMIT
    before = snapshot(out)
    assert graft([*prepare, "--no-progress"], tmp_path / "log", fsize=LIMIT) == 2
    tally("full disk", "trials", 1)
    one_clear_line(tmp_path / "log", str(out))
    tally("full disk", "one clear line", 1)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    tally("full disk", "previous intact", 1)


def test_a_corpus_step_that_finds_no_room(
    graft: Graft, tmp_path: Path, tally: Callable[[str, str, int], None]
) -> None:
    """`graft data redact` (like clean, dedup and collect: the corpus writer) ended in a
    traceback; now one line, and the previous output is still there."""
    corpus = tmp_path / "corpus.jsonl"
    line = '{"text": "A sentence of plain words, cleaned and kept, again and again. %d"}\n'
    corpus.write_text("".join(line % i for i in range(4000)))
    out = tmp_path / "redacted.jsonl"
    clean = ["data", "redact", str(corpus), "--out", str(out), "--no-progress"]
    assert graft(clean, tmp_path / "first.log") == 0
    assert out.stat().st_size > LIMIT
    before = out.read_bytes()
    assert graft(clean, tmp_path / "log", fsize=LIMIT) == 2
    tally("full disk", "trials", 1)
    one_clear_line(tmp_path / "log", str(out))
    tally("full disk", "one clear line", 1)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    tally("full disk", "previous intact", 1)


def test_a_short_write_without_an_errno_on_a_full_device_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gguf's writer reports a full disk as "4096 requested and 0 written", with no errno: the
    device's free space decides (checked before the partial file is deleted)."""
    from graft import atomic_files
    from graft.errors import OutputError

    monkeypatch.setattr(atomic_files, "_device_full", lambda dest: True)
    with pytest.raises(OutputError, match=r"m\.gguf: could not be written \(No space left"):
        with atomic_files.atomic_file(tmp_path / "m.gguf") as temp:
            temp.write_bytes(b"GGUF")
            raise OSError("4096 requested and 0 written")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(atomic_files, "_device_full", lambda dest: False)
    with pytest.raises(OSError, match="requested"):  # any other failure stays itself
        with atomic_files.atomic_file(tmp_path / "m.gguf"):
            raise OSError("4096 requested and 0 written")
