"""The plug-in interface of an objective: the config its module declares.

Each objective module defines one config class, a member of the run config's union discriminated
on `name`: it holds only that objective's knobs (a knob of another objective is a config error),
says what data it reads (token shards for `graft pretrain`, labelled records for
`graft finetune`), the attention it needs of the model (`problems`), and `build`s the objective
the loop runs. Nothing outside the objective's module lists names or branches on them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np
import torch

from graft.data.records import Conversation, TextRecord
from graft.data.redact import RedactConfig, Redactor
from graft.data.shards import TokenShards
from graft.data.tagged import TaggedSentence
from graft.data.tokenizer import Tokenizer
from graft.errors import DataError
from graft.model.config import AttentionKind, ConfigSection, HeadKind, ModelConfig
from graft.objectives.batch import Batch, Objective

DataKind = Literal["shards", "records"]


class ObjectiveSection(ConfigSection):
    """An objective's config: its name, its own knobs, and what it needs of the run."""

    reads: ClassVar[DataKind]
    # The attention the model must have; None: any backbone.
    attention: ClassVar[AttentionKind | None] = None

    name: str

    def problems(self, model: ModelConfig) -> list[str]:
        """What this objective asks of the model that `model` does not give."""
        if self.attention == "causal" and model.attention != "causal":
            return [
                f"objective {self.name} trains a decoder: model.attention must be causal "
                f"(it is {model.attention}); use a decoder preset such as micro or llama-micro"
            ]
        if self.attention == "bidirectional" and model.attention != "bidirectional":
            return [
                f"objective {self.name} trains an encoder: model.attention must be bidirectional; "
                "use an encoder preset such as bert-micro"
            ]
        return []


@dataclass(frozen=True)
class Shards:
    """What a shard objective is built over: one prepared dataset's splits and the run's settings
    for reading them."""

    train: TokenShards
    val: TokenShards | None
    seq_len: int
    tokenizer: Tokenizer
    vocab_size: int
    mask_doc_boundaries: bool = False


def check_windows(window: int, *splits: TokenShards | None, what: str = "") -> None:
    """Refuse a split shorter than one window of `window` tokens (`what` says how it is made)."""
    for shards in splits:
        if shards is not None and len(shards) < window:
            raise DataError(
                f"{shards.directory}: the {shards.split} split has {len(shards)} tokens, "
                f"fewer than one window of {what}{window}; add data or lower train.seq_len"
            )


def spaced_starts(high: int, batch_size: int, n_batches: int) -> list[list[int]]:
    """n_batches batches of window starts spread evenly over [0, high]: validation windows that
    stay the same from one evaluation to the next."""
    starts = np.linspace(0, high, batch_size * n_batches).round().astype(np.int64).tolist()
    return [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]


class ShardObjective(ObjectiveSection):
    """An objective over prepared token shards (`graft pretrain`)."""

    reads: ClassVar[DataKind] = "shards"

    @abstractmethod
    def build(self, data: Shards) -> Objective:
        """The objective over one dataset."""

    def reads_document_boundaries(self) -> bool:
        """Whether it reads data.mask_doc_boundaries (attention stopped at document ends)."""
        return False


@dataclass(frozen=True)
class Records:
    """Where a fine-tune's records come from and how to read them: the run's data settings and
    seed. Each record objective reads its own kind of record with them."""

    train_file: Path
    val_file: Path | None
    val_fraction: float
    text_field: str
    label_field: str
    encoding: str
    skip_invalid: bool
    max_train_examples: int | None
    seed: int
    # What graft.data.redact replaces in the records as they are read; the seed keys pseudonyms.
    redact: tuple[str, ...] = ()
    redact_names: Path | None = None
    redact_mode: Literal["mask", "pseudonym"] = "mask"

    def train_and_val(
        self,
        read: Callable[[Path], tuple[list[Any], int]],
        split: Callable[[list[Any]], tuple[list[Any], list[Any]]] | None = None,
    ) -> tuple[list[Any], list[Any], int]:
        """(training records, validation records, invalid records skipped): val_file when given,
        else `split` (by default a seeded random split) of train_file; redacted when asked."""
        settings = RedactConfig.from_options(
            self.redact,
            names_file=self.redact_names,
            mode=self.redact_mode,
            seed=self.seed,
            option="data.redact",
        )
        redactor = Redactor(settings) if settings is not None else None

        def read_redacted(path: Path) -> tuple[list[Any], int]:
            items, skipped = read(path)
            if redactor is not None:
                items = [self._redacted(item, redactor) for item in items]
            return items, skipped

        train, skipped = read_redacted(self.train_file)
        if self.val_file is None:
            return *(split or self.random_split)(train), skipped
        val, skipped_val = read_redacted(self.val_file)
        return train, val, skipped + skipped_val

    @staticmethod
    def _redacted(item: object, redactor: Redactor) -> object:
        """A record with its text redacted: a text, each message's content, or each word of a
        tagged sentence in place (so its tags still line up)."""
        if isinstance(item, TextRecord):
            return replace(item, text=redactor.redact(item.text))
        if isinstance(item, Conversation):
            messages = tuple(
                replace(message, content=redactor.redact(message.content))
                for message in item.messages
            )
            return replace(item, messages=messages)
        if isinstance(item, TaggedSentence):
            return replace(item, words=redactor.redact_words(item.words))
        raise TypeError(f"cannot redact a {type(item).__name__}")

    def random_split(self, items: list[Any]) -> tuple[list[Any], list[Any]]:
        """A seeded random split: (the rest, val_fraction held out)."""
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.seed))
        held = set(order[: max(1, round(len(items) * self.val_fraction))].tolist())
        return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]

    def sample(self, items: list[Any]) -> list[Any]:
        """A seeded random subset of max_train_examples items (all when None or fewer)."""
        limit = self.max_train_examples
        if limit is None or limit >= len(items):
            return items
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(self.seed))
        return [items[i] for i in sorted(order[:limit].tolist())]


class Encoded:
    """Records encoded once: the token ids of each, and how many were cut to fit the context."""

    ids: list[list[int]]
    truncated: int

    def __len__(self) -> int:
        return len(self.ids)


E = TypeVar("E", bound=Encoded)


class RecordBatches(Generic[E]):
    """The batches of a record objective: random training records, and every validation record
    in order (n_batches is not a limit there: metrics such as F1 need them all)."""

    train: E
    val: E
    rows_unlike_records: str | None = None  # each training row is one record (RecordSampled)

    def batch(self, data: E, rows: list[int]) -> Batch:
        raise NotImplementedError

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        rows = torch.randint(0, len(self.train), (batch_size,), generator=generator).tolist()
        return self.batch(self.train, rows)

    def train_records(self) -> int:
        return len(self.train)

    def records_batch(self, rows: list[int], generator: torch.Generator) -> Batch:
        return self.batch(self.train, rows)

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        count = len(self.val)
        return [
            self.batch(self.val, list(range(start, min(start + batch_size, count))))
            for start in range(0, count, batch_size)
        ]

    def notes(
        self, kind: str, skipped: int, max_len: int, more: str = "", cut: str = ""
    ) -> tuple[str, ...]:
        """Lines worth reporting: how many records of `kind` (`more` about them), how many invalid
        ones were skipped, and how many were truncated to `max_len` tokens (`cut` says how)."""
        notes = [f"{len(self.train):,} training and {len(self.val):,} validation {kind}{more}"]
        if skipped:
            notes.append(f"skipped {skipped:,} invalid records (--data.skip_invalid)")
        truncated = self.train.truncated + self.val.truncated
        if truncated:
            notes.append(
                f"warning: {truncated:,} {kind} longer than {max_len} tokens{cut} were truncated"
            )
        return tuple(notes)


@dataclass(frozen=True)
class TaskData:
    """What a record objective's build gives the fine-tune: the objective, the label set of its
    head, and lines worth reporting (counts, skipped and truncated records)."""

    objective: Objective
    labels: tuple[str, ...]
    notes: tuple[str, ...] = ()


class RecordObjective(ObjectiveSection):
    """An objective over labelled records (`graft finetune`), with the head it trains."""

    reads: ClassVar[DataKind] = "records"
    head: ClassVar[HeadKind]
    # The data settings it reads beyond those every task reads (files, split, sample size,
    # encoding, skip_invalid, redaction): a task that reads none of them refuses them.
    data_fields: ClassVar[tuple[str, ...]] = ()
    # The validation metric a fine-tune follows by default (train.monitor).
    monitor: ClassVar[str] = "val/loss"

    @abstractmethod
    def build(
        self, records: Records, tokenizer: Tokenizer, *, max_len: int, bidirectional: bool
    ) -> TaskData:
        """Read the records and build the objective over them."""
