"""`graft chat`: streaming replies, the kept history, /reset, /exit and end of input; the
conversation trimmed to the context; and the command in a subprocess with piped stdin."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graft.data.tokenizer import Tokenizer
from graft.infer.engine import Engine, EngineConfig, Request, RequestHandle
from graft.terminal_chat import ChatSession, chat_loop

from .conftest import CONTEXT, tiny_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def engine(tokenizer: Tokenizer) -> Iterator[Engine]:
    engine = Engine(
        tiny_model(tokenizer),
        tokenizer,
        EngineConfig(max_batch=1, max_queue=1, max_batch_tokens=CONTEXT),
    )
    engine.start()
    yield engine
    engine.stop()


class Recorder:
    """Records the prompt of every request a session submits."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.prompts = engine, []

    def submit(self, request: Request) -> RequestHandle:
        self.prompts.append(request.prompt_ids)
        return self.engine.submit(request)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


def session(engine: Engine, tokenizer: Tokenizer, **kw) -> tuple[ChatSession, Recorder]:
    recorder = Recorder(engine)
    return ChatSession(recorder, tokenizer, frozenset({tokenizer.eot_id}), seed=3, **kw), recorder  # type: ignore[arg-type]


def test_history_reset_commands_and_end_of_input(engine: Engine, tokenizer: Tokenizer):
    chat, recorder = session(engine, tokenizer, system="Be brief.", max_tokens=6)
    out = io.StringIO()
    chat_loop(chat, io.StringIO("hello there\nand again\n/reset\nhello there\n/bogus\n\n"), out)
    text = out.getvalue()
    assert "[conversation cleared]\n" in text and "[unknown command /bogus" in text
    first, second, third = (tokenizer.decode(p) for p in recorder.prompts)
    assert "Be brief." in first and "hello there" in first
    # The second prompt carries the first exchange, reply included; after /reset it is gone again.
    assert second.startswith(first) and "and again" in second
    assert third == first
    replies = text.split("[conversation cleared]\n")
    assert (
        replies[0].splitlines()[0] == replies[1].splitlines()[0]
    )  # same prompt, same seed, same reply
    assert chat.history[0].content == "hello there" and len(chat.history) == 2


def test_exit_stops_reading(engine: Engine, tokenizer: Tokenizer):
    chat, recorder = session(engine, tokenizer, max_tokens=2)
    chat_loop(chat, io.StringIO("one\n/exit\ntwo\n"), io.StringIO())
    assert len(recorder.prompts) == 1


def test_old_turns_are_dropped_when_the_context_is_full(engine: Engine, tokenizer: Tokenizer):
    chat, recorder = session(engine, tokenizer, system="S", max_tokens=8)
    out = io.StringIO()
    turns = "".join(f"turn {i} the quick brown fox jumps\n" for i in range(8))
    chat_loop(chat, io.StringIO(turns), out)
    assert "no longer fit the context and were dropped" in out.getvalue()
    assert all(len(p) + 1 <= CONTEXT for p in recorder.prompts)
    last = tokenizer.decode(recorder.prompts[-1])
    assert "turn 7" in last and "turn 0 " not in last and last.startswith("<|system|>\nS")


def test_a_message_too_long_for_the_context_is_refused_and_the_chat_goes_on(
    engine: Engine, tokenizer: Tokenizer
):
    chat, recorder = session(engine, tokenizer, max_tokens=4)
    out = io.StringIO()
    chat_loop(chat, io.StringIO("the fox " * 200 + "\nshort\n"), out)
    assert "write a shorter one" in out.getvalue()
    assert len(recorder.prompts) == 1 and chat.history[0].content == "short"


def graft(*args: object, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graft", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.e2e
def test_graft_chat_with_piped_input(checkpoint: Path):
    proc = graft(
        "chat",
        checkpoint,
        "--seed",
        "1",
        "--max-tokens",
        "8",
        "--temperature",
        "0.7",
        stdin="hi there\n/reset\nhi there\n",
    )
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stdout.split("[conversation cleared]\n")
    assert before == after and before.strip()
    assert "you>" not in proc.stdout  # no prompt marker when stdin is not a terminal
    assert graft("chat", checkpoint, stdin="").returncode == 0  # end of input at once: a clean exit


@pytest.mark.e2e
def test_graft_chat_refuses_bad_settings_in_one_line(checkpoint: Path):
    proc = graft("chat", checkpoint, "--temperature", "-1")
    assert (
        proc.returncode == 2
        and proc.stderr.startswith("graft: error: ")
        and len(proc.stderr.splitlines()) == 1
    )
    assert "temperature" in proc.stderr
