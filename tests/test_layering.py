"""The layering a reader can trust (DESIGN.md), read off the imports of every module in src/graft:
lower layers never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "graft"

# package -> the graft packages it must never import
# (config, checkpoint and adapt are modules above the model, data and objectives: graft.config
# composes every objective's config, so importing it from below loads them all.)
FORBIDDEN = {
    "model": {
        "train",
        "objectives",
        "infer",
        "serve",
        "evaluate",
        "experiments",
        "config",
        "checkpoint",
        "adapt",
    },
    "data": {"train", "objectives", "experiments", "config", "checkpoint", "adapt"},
    "infer": {"train", "experiments"},
    "serve": {"train", "experiments"},
    "evaluate": {"train", "experiments"},
    "objectives": {
        "train",
        "serve",
        "infer",
        "evaluate",
        "experiments",
        "config",
        "checkpoint",
        "adapt",
    },
    "train": {"serve", "experiments"},
    "insight": {"train", "serve", "experiments"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every graft import in a file, at any depth (lazy imports count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] == "graft"]


def test_no_module_imports_a_layer_above_it() -> None:
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        if len(parts) < 2 or parts[0] not in FORBIDDEN:
            continue
        for line, module in _imports(path):
            target = module.split(".")[1] if module.count(".") else ""
            if target in FORBIDDEN[parts[0]]:
                broken.append(f"{path.relative_to(SRC.parent)}:{line} imports {module}")
    assert not broken, "layering broken:\n" + "\n".join(broken)


def test_the_walk_sees_imports() -> None:
    """The checker itself: it finds a known import, so an empty result above means something."""
    assert (1, "graft.errors") in [(1, m) for _, m in _imports(SRC / "model" / "config.py")]


# The model's parts that only LanguageModel.forward may touch: whoever trains, scores or serves
# a model calls it once, so a DDP/FSDP wrapper or torch.compile can wrap the whole model.
_MODEL_PARTS = {"lm_head", "lm_head_transform", "pooler", "nsp_head", "classifier"}
# Where the model is only called, never taken apart.
_CALLERS = (
    "objectives",
    "train/loop.py",
    "evaluate",
    "experiments",
    "serve",
    "infer/generate.py",
    "infer/engine.py",
    "insight",
)


def _reaches_into_the_model(path: Path) -> list[str]:
    """`name.model`, `name.lm_head`, ... where the name ends in "model" (model, self.model)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in _MODEL_PARTS | {"model"}:
            inner = node.value
            owner = inner.attr if isinstance(inner, ast.Attribute) else getattr(inner, "id", "")
            if owner.endswith("model"):
                found.append(f"{path.name}:{node.lineno} {owner}.{node.attr}")
    return found


def test_callers_use_the_one_model_entry_point() -> None:
    paths = [p for c in _CALLERS for p in sorted((SRC / c).rglob("*.py")) or [SRC / c]]
    broken = [hit for path in paths for hit in _reaches_into_the_model(path)]
    assert not broken, "reaches past model(...):\n" + "\n".join(broken)


def test_the_entry_point_check_sees_a_reach(tmp_path: Path) -> None:
    text = (SRC / "objectives" / "clm.py").read_text(encoding="utf-8")
    copy = tmp_path / "clm.py"  # a real file with one reach added
    copy.write_text(text + "\nhead = model.lm_head.weight\n", encoding="utf-8")
    assert [hit.split(" ")[1] for hit in _reaches_into_the_model(copy)] == ["model.lm_head"]


def test_only_the_command_imports_the_command() -> None:
    """graft.cli is the top: the library never imports it, and each stage's module of it
    (data, train, use, evaluate) imports only the shared graft.cli.common, not another stage."""
    broken = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        allowed = {"graft.cli.common"} if parts[0] == "cli" else set()
        if parts in (("__main__.py",), ("cli", "__init__.py")):
            continue
        for line, module in _imports(path):
            if module.startswith("graft.cli") and module not in allowed:
                broken.append(f"{path.relative_to(SRC.parent)}:{line} imports {module}")
    assert not broken, "imports of the command:\n" + "\n".join(broken)


def test_the_command_help_loads_no_torch() -> None:
    """`graft --help` (and a refused flag) answer at once: building the parser imports no torch,
    which takes seconds to load. A fresh interpreter, since this one has torch already."""
    import subprocess
    import sys

    code = "import sys, graft.cli; graft.cli.build_parser(); print('torch' in sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert shown.strip() == "False"
