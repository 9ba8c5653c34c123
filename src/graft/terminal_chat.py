"""`graft chat`: a conversation with a checkpoint in the terminal, on the engine `graft serve` uses.

Each line read is a user turn; the reply streams to the output as the engine makes it, and both
join the history the next prompt is built from (with the same chat template and end-of-turn rules
as the HTTP API: `graft.serve.prompts`). `/reset` clears the history, `/exit` or end of input
leaves. When the history outgrows the context, the oldest turns are dropped (the system prompt
stays) and a note says so. Ctrl-C during a reply stops that reply and keeps what was written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from graft.data.records import Message
from graft.data.tokenizer import Tokenizer
from graft.errors import ConfigError, GraftError
from graft.infer.engine import Engine, EngineConfig, Request
from graft.infer.sampling import DEFAULT_TEMPERATURE, SamplingParams
from graft.serve.prompts import PromptError, chat_prompt_ids

# The ChatOptions fields that say where the model comes from and runs; the rest are ChatSession's.
_MODEL_OPTIONS = ("checkpoint", "device")
HELP = "commands: /reset clears the conversation, /exit leaves (so does end of input, Ctrl-D)"


@dataclass(frozen=True)
class ChatOptions:
    """Everything `graft chat` takes; each default lives here."""

    checkpoint: Path
    system: str | None = None
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None  # None: up to the rest of the context
    seed: int | None = None
    device: str = "cpu"


@dataclass
class ChatSession:
    """One conversation: its history and how each reply is sampled."""

    engine: Engine
    tokenizer: Tokenizer
    stop_ids: frozenset[int]
    system: str | None = None
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int | None = None
    history: list[Message] = field(default_factory=list)

    def reset(self) -> None:
        self.history.clear()

    def _prompt(self, user: str) -> tuple[list[int], int]:
        """Prompt ids for the next reply and how many earlier turns had to be dropped to fit."""
        context = self.engine.model_config.max_seq_len
        want = self.max_tokens if self.max_tokens is not None else max(1, context // 4)
        system = [Message("system", self.system)] if self.system else []
        turns = [*self.history, Message("user", user)]
        dropped = 0
        while True:
            ids = chat_prompt_ids(self.tokenizer, [*system, *turns])
            if len(ids) + min(want, context - 1) <= context or len(turns) == 1:
                break
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # a user turn and its reply
            dropped += 1
        if len(ids) >= context:
            raise PromptError(
                f"the message is {len(ids)} tokens with the chat template; the model's context is "
                f"{context}; write a shorter one"
            )
        if dropped:
            self.history[:] = turns[:-1]
        return ids, dropped

    def reply(self, user: str, out: TextIO) -> str:
        """Stream the reply to `user` into `out`, add both turns to the history, return the
        reply."""
        ids, dropped = self._prompt(user)
        if dropped:
            out.write(
                f"[the oldest {dropped} exchange(s) no longer fit the context and were dropped]\n"
            )
        room = self.engine.model_config.max_seq_len - len(ids)
        params = SamplingParams(
            max_new_tokens=room if self.max_tokens is None else min(self.max_tokens, room),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop_ids=self.stop_ids,
        )
        handle = self.engine.submit(Request(prompt_ids=ids, params=params))
        pieces: list[str] = []
        try:
            for event in handle.events():
                if event.finish_reason == "error":
                    raise GraftError(f"chat: generation failed ({event.error})")
                pieces.append(event.text)
                out.write(event.text)
                out.flush()
        except KeyboardInterrupt:
            handle.cancel()
            out.write(" [stopped]")
        out.write("\n")
        out.flush()
        text = "".join(pieces)
        self.history += [Message("user", user), Message("assistant", text)]
        return text


def chat_loop(
    session: ChatSession, stdin: TextIO, stdout: TextIO, *, interactive: bool = False
) -> None:
    """Read turns from `stdin` until /exit or end of input; a prompt marker only when
    interactive."""
    if interactive:
        stdout.write(HELP + "\n")
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            if interactive:
                stdout.write("\n")
            return
        text = line.rstrip("\r\n")
        command = text.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            stdout.write("[conversation cleared]\n")
            continue
        if command.startswith("/"):
            stdout.write(f"[unknown command {command}; {HELP}]\n")
            continue
        if not command:
            continue
        try:
            session.reply(text, stdout)
        except PromptError as err:
            stdout.write(f"[{err}]\n")


def run_chat(
    options: ChatOptions, *, stdin: TextIO | None = None, stdout: TextIO | None = None
) -> None:
    """Load the checkpoint and chat on `stdin`/`stdout` (the terminal by default)."""
    from graft.model.convert.hf import stop_ids
    from graft.serve.model_info import load_model_for_serving

    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    try:  # settings first: a typo should not cost a model load
        SamplingParams(
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            seed=options.seed,
            max_new_tokens=1 if options.max_tokens is None else options.max_tokens,
        )
    except ValueError as err:
        raise ConfigError(f"chat: {err}") from None
    model, tokenizer, source = load_model_for_serving(options.checkpoint, options.device)
    if not model.config.can_generate:
        raise GraftError(
            f"chat: {options.checkpoint} is not a causal language model (head {model.config.head}, "
            f"{model.config.attention} attention); it cannot write replies"
        )
    # One conversation: one slot, and a cost limit that any prompt fitting the context meets.
    engine = Engine(
        model,
        tokenizer,
        EngineConfig(max_batch=1, max_queue=1, max_batch_tokens=model.config.max_seq_len),
    )
    settings = {key: value for key, value in vars(options).items() if key not in _MODEL_OPTIONS}
    session = ChatSession(engine, tokenizer, stop_ids(tokenizer, source), **settings)
    engine.start()
    try:
        chat_loop(session, stdin, stdout, interactive=stdin.isatty())
    finally:
        engine.stop()
