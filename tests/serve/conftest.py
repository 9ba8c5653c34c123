"""Fixtures for the server tests: a tiny causal LM with a small BPE tokenizer, an engine and app
around it, and a live uvicorn server on a free loopback port (in a thread of this process, so tests
can look at the engine while a client talks to it over real sockets)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi import FastAPI

from graft.checkpoint import save_checkpoint
from graft.data.tokenizer import Tokenizer, train_tokenizer
from graft.infer.engine import Engine, EngineConfig
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel
from graft.serve import ModelInfo, create_app, describe_model

CONTEXT = 128
MODEL_NAME = "tiny"


@pytest.fixture(scope="session")
def tokenizer(
    tmp_path_factory: pytest.TempPathFactory, make_corpus: Callable[..., Path]
) -> Tokenizer:
    """Byte-level BPE with 400 tokens, trained on the shared pseudo-English corpus (chat markup such
    as <|user|> takes several tokens: prompts are long for their text)."""
    corpus = make_corpus(tmp_path_factory.mktemp("serve_corpus"), documents=8, words=200)
    texts = [path.read_text(encoding="utf-8") for path in sorted(corpus.glob("*.txt"))]
    return train_tokenizer(texts, "bpe", 400, min_frequency=1)


def tiny_model(
    tokenizer: Tokenizer, *, labels: tuple[str, ...] = (), seed: int = 0
) -> LanguageModel:
    torch.manual_seed(seed)
    head = {"head": "sequence", "labels": labels} if labels else {}
    # init_std 0.3 gives peaked distributions, so samples are not uniform noise.
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_len=CONTEXT,
        d_model=32,
        n_layers=2,
        n_heads=2,
        init_std=0.3,
        **head,
    )
    return LanguageModel(config).eval()


def slow_down(model: LanguageModel, seconds: float) -> None:
    """Every forward pass (a prefill or one decode step) takes at least `seconds` more: time for a
    test to act while a request is still running."""
    model.register_forward_hook(lambda module, args, output: time.sleep(seconds))


@dataclass
class Served:
    app: FastAPI
    engine: Engine
    info: ModelInfo


def build(
    tokenizer: Tokenizer,
    model: LanguageModel | None = None,
    *,
    api_key: str | None = None,
    start: bool = True,
    **engine: int,
) -> Served:
    model = model if model is not None else tiny_model(tokenizer)
    settings = {"max_batch": 4, "max_queue": 8, "max_batch_tokens": 4 * CONTEXT, **engine}
    served_engine = Engine(model, tokenizer, EngineConfig(**settings))
    info = describe_model(model, tokenizer, None, name=MODEL_NAME, created=1_700_000_000)
    if start:
        served_engine.start()
    return Served(create_app(served_engine, info, api_key=api_key), served_engine, info)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Whether `condition` holds within `timeout` seconds, polled every 20 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="module")
def served(tokenizer: Tokenizer) -> Iterator[Served]:
    """The app over a running engine (no key), shared by a module's tests."""
    s = build(tokenizer)
    yield s
    s.engine.stop()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    """The tiny model saved as a graft checkpoint directory. Read-only."""
    out = tmp_path_factory.mktemp("serve_ckpt") / "tiny"
    return save_checkpoint(
        out, model=tiny_model(tokenizer), tokenizer=tokenizer, run_config_yaml="{}\n"
    )
