"""What the bench scripts' smoke tests share: loading a script as a module, as it runs."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="session")
def load_bench() -> Callable[[str], ModuleType]:
    """`load_bench("train_throughput")`: bench/train_throughput.py as a module, with bench/ on the
    import path as when the script runs (its scripts share bench/machine.py)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
        return module

    return load
