"""A request to the generation engine and what comes back: the `Request`, its stream of `Event`s
(one per token, then one final), the `Completion` they add up to, and the `RequestHandle` a
caller reads them from, blocking or with asyncio, or cancels the request with. The engine
(`graft.infer.engine`) puts the events; nothing here runs a model.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from graft.infer.generate import GeneratedToken
from graft.infer.sampling import SamplingParams

__all__ = ["Completion", "Event", "Request", "RequestHandle", "collect"]


@dataclass(frozen=True)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    stop: tuple[str, ...] = ()  # stop strings, matched on decoded text
    request_id: str = ""  # a uuid when left empty

    def __post_init__(self) -> None:
        if not self.request_id:
            object.__setattr__(self, "request_id", uuid.uuid4().hex)


@dataclass(frozen=True)
class Event:
    """One per generated token (finish_reason None), then exactly one final event.

    The final event never carries a token (token None); its `text` is whatever the stream was
    still holding back (an incomplete character, or text that could have begun a stop string),
    possibly "". Token events' `text` is the text that became final with that token. No text ever
    includes a stop string or any part of one; a stop id's own text is never emitted."""

    request_id: str
    token: GeneratedToken | None
    text: str
    finish_reason: str | None  # None while running, then "stop", "length", "cancelled" or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # what went wrong, with finish_reason "error"


@dataclass(frozen=True)
class Completion:
    """A finished request, as generate() and RequestHandle.result() return it."""

    request_id: str
    token_ids: list[int]
    text: str
    finish_reason: str
    tokens: list[GeneratedToken]  # with logprob and top alternatives when params.logprobs was set
    prompt_tokens: int
    error: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def logprobs(self) -> list[float | None]:
        """Each generated token's logprob (None unless params.logprobs was set)."""
        return [t.logprob for t in self.tokens]


class RequestHandle:
    """The caller's side of a submitted request: its events, and a way to cancel it.

    Events are kept in the handle until read, so nothing is lost however late the reader starts.
    Read them once, with either `events()` (blocking, any thread) or `aevents()` (asyncio)."""

    def __init__(
        self, request_id: str, prompt_tokens: int, wake_engine: Callable[[], None]
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self._events: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._done = False  # the final event has been put
        self._ended = False  # the final event has been handed to a reader
        self._cancelled = False
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._wake_engine = wake_engine
        self._result: Completion | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        """The engine has finished with this request (its final event is waiting to be read, or
        was)."""
        return self._done

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request is done; False if `timeout` seconds pass first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done, timeout)

    def cancel(self) -> None:
        """Ask the engine to drop this request; at its next step it frees the slot and sends a
        final event with finish_reason "cancelled" (unless the request finished first)."""
        self._cancelled = True
        self._wake_engine()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events as they come; ends after the one with finish_reason set. TimeoutError when no
        event arrives within `timeout` seconds of the previous one."""
        while not self._ended:
            with self._cond:
                if not self._cond.wait_for(lambda: self._events, timeout):
                    raise TimeoutError(f"request {self.request_id}: no event within {timeout} s")
                event = self._events.popleft()
            self._ended = event.finish_reason is not None
            yield event

    async def aevents(self) -> AsyncIterator[Event]:
        """events() for asyncio: the engine thread wakes the loop with call_soon_threadsafe, so
        waiting costs no thread (asyncio.to_thread would hold an executor thread per stream)."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        with self._cond:
            self._wakers.append((loop, ready))
        try:
            while not self._ended:
                ready.clear()  # before looking: an event put after this sets it again
                with self._cond:
                    event = self._events.popleft() if self._events else None
                if event is None:
                    await ready.wait()
                    continue
                self._ended = event.finish_reason is not None
                yield event
        finally:
            with self._cond:
                self._wakers.remove((loop, ready))

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the end and return the whole completion. It reads the events, so call it
        instead of events()/aevents(), not after them; calling it again returns the same object."""
        if self._result is None:
            self._result = collect(self.request_id, self.prompt_tokens, self.events(timeout))
        return self._result

    def _put(self, event: Event) -> None:
        with self._cond:
            self._events.append(event)
            self._done = event.finish_reason is not None
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, ready in wakers:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the reader's loop has closed; nobody is listening there
                pass


def collect(request_id: str, prompt_tokens: int, events: Iterator[Event]) -> Completion:
    tokens: list[GeneratedToken] = []
    text: list[str] = []
    for event in events:
        if event.token is not None:
            tokens.append(event.token)
        text.append(event.text)
        if event.finish_reason is not None:
            return Completion(
                request_id,
                [t.id for t in tokens],
                "".join(text),
                event.finish_reason,
                tokens,
                prompt_tokens,
                event.error,
            )
    raise RuntimeError(f"request {request_id}: events ended without a final event")
