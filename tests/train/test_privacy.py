"""Private training (DP-SGD through Opacus): the epsilon graft reports is the accountant's, each
record's influence is clipped, per-sample gradients are exact for every model family and for LoRA,
adapters move under DP, a resumed run keeps counting, and bad settings are refused before
training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from graft.adapt import apply_adaptation
from graft.config import AdaptConfig, DPConfig, load_finetune_config, load_run_config
from graft.distributed import ONE_PROCESS
from graft.errors import ConfigError, TrainingError
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.batch import Batch, LossSum, LossTotals, run
from graft.train.metrics_log import read_metrics
from graft.train.privacy import Privacy, PrivacySettings, make_private

from ..train.test_finetune import TINY, write_records

cli_main = __import__("graft.cli", fromlist=["main"]).main


class Rows:
    """A record objective over fixed tensors: a sequence classifier's loss, summed."""

    name = "rows"

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def train_records(self) -> int:
        return len(self.ids)

    def records_batch(self, rows: list[int], generator: torch.Generator) -> Batch:
        return Batch(self.ids[rows], sequence_targets=self.labels[rows])

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def eval_batches(self, batch_size: int, n_batches: int) -> list[Batch]:
        return []

    def loss(self, model: LanguageModel, batch: Batch) -> LossSum:
        logits = run(model, batch, ["classifier"]).class_logits
        assert logits is not None and batch.sequence_targets is not None
        rows = F.cross_entropy(logits, batch.sequence_targets, reduction="none")
        return LossSum(rows.sum(), len(batch.input_ids), rows=rows)

    def metrics(self, totals: LossTotals, split: str) -> dict[str, float]:
        return {f"{split}/loss": totals.mean}


def _classifier(method: str = "full", **overrides: object) -> LanguageModel:
    torch.manual_seed(0)
    config = preset("nano", max_seq_len=16, d_model=32, n_layers=2, n_heads=2, dropout=0.0)
    config = config.model_copy(
        update={"vocab_size": 50, "head": "sequence", "labels": ("a", "b"), **overrides}
    )
    model = LanguageModel(config)
    apply_adaptation(model, AdaptConfig(method=method, lora_dropout=0.0))  # type: ignore[arg-type]
    return model.train()


def _private(
    model: LanguageModel, objective: Rows, noise: float, lr: float, batch: int, ghost: bool = False
) -> Privacy:
    """Privacy over plain SGD, built the way make_private builds it (without its config)."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    model.per_sample_gradients(True)
    module = (
        GradSampleModuleFastGradientClipping(model, loss_reduction="sum", max_grad_norm=1.0)
        if ghost
        else GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    )
    settings = PrivacySettings(
        records=objective.train_records(),
        expected_batch=batch,
        sample_rate=batch / objective.train_records(),
        noise_multiplier=noise,
        max_grad_norm=1.0,
        delta=1e-5,
        accountant="rdp",
        unit="one row",
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    return Privacy(settings, module, torch.optim.SGD(trained, lr=lr), model, ghost=ghost)


def _step(privacy: Privacy, objective: Rows, micro: list[list[int]]) -> None:
    for i, rows in enumerate(micro):
        batch = objective.records_batch(rows, torch.Generator())
        loss = objective.loss(privacy.module, batch)  # type: ignore[arg-type]
        privacy.backward(loss, last=i == len(micro) - 1)
    privacy.step(drew_any=bool(micro))
    privacy.optimizer.zero_grad(set_to_none=True)


def _flat(model: LanguageModel) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("ghost", [False, True], ids=["flat", "ghost"])
def test_one_record_moves_the_weights_no_more_than_the_clipping_bound(ghost: bool) -> None:
    torch.manual_seed(1)
    ids = torch.randint(0, 50, (4, 8))
    labels = torch.tensor([0, 1, 0, 1])
    objective = Rows(ids, labels)
    # The crafted record: its gradient is far above the bound (checked below), so only clipping
    # keeps its influence small.
    model = _classifier()
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    lr, expected = 1.0, 4
    deltas = []
    for rows in ([[0, 1, 2]], [[0, 1], [2, 3]]):  # without and with record 3 (two micro-batches)
        model.load_state_dict(start)
        before = _flat(model)
        privacy = _private(model, objective, noise=0.0, lr=lr, batch=expected, ghost=ghost)
        _step(privacy, objective, rows)
        deltas.append(_flat(model) - before)
        privacy.module._close()  # type: ignore[operator]
    # Record 3's own gradient, unclipped
    model.load_state_dict(start)
    model.zero_grad()
    objective.loss(model, objective.records_batch([3], torch.Generator())).total.backward()
    own = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert own.norm() > 20 * 1.0, "the crafted record must need clipping"
    influence = (deltas[1] - deltas[0]).norm()
    assert influence <= lr * 1.0 / expected * (1 + 1e-4), influence
    assert influence > 0.5 * lr / expected  # it was clipped, not dropped


@pytest.mark.parametrize(
    "family", ["gpt2-lm", "llama-lm", "bert-mlm", "gpt2-classifier-lora", "llama-lora-lm"]
)
def test_per_sample_gradients_equal_each_records_own(family: str) -> None:
    """Opacus's per-sample gradients of graft's model equal each record's gradient computed
    alone: learned positions, tied embeddings, RMSNorm, the masked-LM head, LoRA adapters."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    name = {"gpt2": "nano", "llama": "llama-nano", "bert": "bert-micro"}[family.split("-")[0]]
    config = preset(name, max_seq_len=16, d_model=32, n_layers=2, n_heads=2, dropout=0.0)
    head = "sequence" if "classifier" in family else "lm"
    config = config.model_copy(
        update={
            "vocab_size": 40,
            "head": head,
            "labels": ("a", "b") if head == "sequence" else (),
            **({"n_kv_heads": 1} if "llama" in family else {}),
        }
    )
    model = LanguageModel(config).train()
    if "lora" in family:
        apply_adaptation(model, AdaptConfig(method="lora", lora_dropout=0.0))
    model.per_sample_gradients(True)
    ids = torch.randint(0, 40, (3, 10))
    targets = ids.roll(-1, 1)
    targets[:, ::3] = -100  # unscored positions, as padding and masking make them

    def loss(module: torch.nn.Module, rows: slice) -> torch.Tensor:
        if head == "sequence":
            out = module(ids[rows], heads=["classifier"])
            return F.cross_entropy(out.class_logits, torch.tensor([0, 1, 1])[rows], reduction="sum")
        heads = ["masked_lm"] if "mlm" in family else ["lm"]
        return module(ids[rows], heads=heads, targets=targets[rows]).lm_loss

    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    loss(gsm, slice(None)).backward()
    # every tensor the loss uses (an mlm loss leaves BERT's NSP head and pooler out)
    trained = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
    wanted = [p for p in model.parameters() if p.requires_grad]
    assert len(trained) >= len(wanted) - 4
    samples = {n: p.grad_sample.clone() for n, p in trained}  # type: ignore[attr-defined]
    for i in range(3):
        model.zero_grad()
        loss(model, slice(i, i + 1)).backward()
        for n, p in trained:
            assert p.grad is not None
            torch.testing.assert_close(samples[n][i], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    gsm._close()


@pytest.mark.parametrize("ghost", [False, True], ids=["flat", "ghost"])
def test_lora_adapters_move_at_every_private_step(ghost: bool) -> None:
    torch.manual_seed(2)
    objective = Rows(torch.randint(0, 50, (16, 8)), torch.randint(0, 2, (16,)))
    model = _classifier("lora")
    privacy = _private(model, objective, noise=0.5, lr=1e-2, batch=4, ghost=ghost)
    adapters = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert adapters and all(p.requires_grad for _, p in adapters)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        before = [p.detach().clone() for _, p in adapters]
        micro = privacy.draw(objective, 2, generator)  # type: ignore[arg-type]
        for i, batch in enumerate(micro):
            loss = objective.loss(privacy.module, batch)  # type: ignore[arg-type]
            privacy.backward(loss, last=i == len(micro) - 1)
        privacy.step(drew_any=bool(micro))
        privacy.optimizer.zero_grad(set_to_none=True)
        for (name, p), old in zip(adapters, before, strict=True):
            assert torch.isfinite(p).all(), name
            assert not torch.equal(p.detach(), old), f"{name} did not move"
    # The runtime check catches a step that leaves the adapters where they were (Opacus #820).
    privacy.optimizer.original_optimizer.step = lambda closure=None: None  # type: ignore[method-assign]
    loss = objective.loss(privacy.module, objective.records_batch([0, 1], generator))  # type: ignore[arg-type]
    privacy.backward(loss, last=True)
    with pytest.raises(TrainingError, match="did not move in a private step"):
        privacy.step(drew_any=True)


def test_ghost_clipping_gives_the_flat_update() -> None:
    """Ghost norms and materialised per-sample gradients clip the same records the same way."""
    torch.manual_seed(3)
    objective = Rows(torch.randint(0, 50, (6, 8)), torch.randint(0, 2, (6,)))
    updates = []
    for ghost in (False, True):
        model = _classifier()
        with torch.no_grad():
            model.classifier.weight.mul_(20)  # some records clipped, some not
        before = _flat(model)
        _step(_private(model, objective, 0.0, 1.0, 6, ghost=ghost), objective, [[0, 1, 2], [3, 4]])
        updates.append(_flat(model) - before)
    torch.testing.assert_close(updates[0], updates[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    ("family", "ghost"), [("classifier", True), ("tied-lm", False), ("untied-lm", True)]
)
def test_auto_clipping_picks_ghost_only_where_its_norms_are_exact(
    family: str, ghost: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tied embedding is one tensor used by two layers: ghost clipping would measure it layer
    by layer, so auto falls back to per-sample gradients and says why."""
    from graft.objectives.clm import next_token_loss

    torch.manual_seed(4)
    ids = torch.randint(0, 50, (8, 9))
    if family == "classifier":
        model, objective = _classifier(), Rows(ids, torch.randint(0, 2, (8,)))
    else:
        config = preset("nano", max_seq_len=16, d_model=32, n_layers=1, n_heads=2, dropout=0.1)
        tied = family == "tied-lm"
        model = LanguageModel(config.model_copy(update={"vocab_size": 50, "tie_embeddings": tied}))
        objective = Rows(ids, torch.zeros(8, dtype=torch.long))
        objective.loss = (
            lambda m, b: next_token_loss(  # type: ignore[method-assign]
                m, Batch(b.input_ids[:, :-1], b.input_ids[:, 1:])
            )
        )
    config = load_run_config(None, ["dp.noise_multiplier=1", "train.batch_size=4"])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    privacy = make_private(config, model.train(), sgd, objective, ONE_PROCESS, None, print)  # type: ignore[arg-type]
    assert privacy.ghost is ghost
    said = capsys.readouterr().out
    assert ("dp: per-sample gradients (flat clipping): ghost clipping" in said) is not ghost


def test_a_tensor_without_per_sample_gradients_is_refused_before_training(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Learned positions sliced once for the whole batch (the fast path) give no per-sample
    gradient: the preflight must say so instead of training with an unclipped tensor."""
    monkeypatch.setattr(LanguageModel, "per_sample_gradients", lambda self, enabled=True: None)
    objective = Rows(torch.randint(0, 50, (64, 8)), torch.randint(0, 2, (64,)))
    model = _classifier()
    flags = ["dp.noise_multiplier=1", "train.batch_size=4", "dp.clipping=flat"]
    config = load_run_config(None, flags)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="embed_positions.weight gets no per-sample gradient"):
        make_private(config, model, sgd, objective, ONE_PROCESS, None, print)  # type: ignore[arg-type]


def test_qa_is_refused_because_its_rows_are_windows_not_questions() -> None:
    """qa's training rows are windows of a context (several for a long one): counting them as
    records would make N, the sampling rate and the guarantee's unit wrong."""
    from graft.objectives.qa import AnswerSpans

    # Rows with qa's own statement of why its rows are not its records: privacy reads that, not
    # the objective's name.
    objective = Rows(torch.randint(0, 50, (64, 8)), torch.randint(0, 2, (64,)))
    objective.rows_unlike_records = AnswerSpans.rows_unlike_records  # type: ignore[attr-defined]
    flags = ["model.attention=bidirectional", "dp.noise_multiplier=1", "train.batch_size=4"]
    config = load_finetune_config("qa", None, flags)
    model = _classifier()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="dp: objective qa trains on windows"):
        make_private(config, model, sgd, objective, ONE_PROCESS, None, print)  # type: ignore[arg-type]


def _dp_finetune(base: Path, records: Path, out: Path, *extra: str) -> int:
    return cli_main(
        [
            "finetune",
            "classify",
            "--init",
            str(base),
            "--train",
            str(records),
            "--out",
            str(out),
            "--objective.labels=[neg, pos]",
            "--train.batch_size=8",
            "--dp.batch=16",
            "--train.eval_every=5",
            "--train.log_every=5",
            "--train.progress=false",
            "--optim.lr=3e-3",
            "--optim.warmup_steps=1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, bytes_data: Path) -> Path:
    out = tmp_path_factory.mktemp("dp") / "base"
    args = ["pretrain", "--data", str(bytes_data), "--out", str(out), "--model.preset=nano"]
    assert cli_main([*args, *TINY]) == 0
    return out / "checkpoints" / "last"


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_is_the_opacus_accountants(
    base: Path, tmp_path: Path, accountant: str
) -> None:
    from opacus.accountants import create_accountant

    records = write_records(tmp_path / "train.jsonl", n=200)
    out = tmp_path / "run"
    steps = "--train.max_steps=10"
    flags = [steps, "--dp.epsilon=3", f"--dp.accountant={accountant}"]
    assert _dp_finetune(base, records, out, *flags) == 0
    saved = json.loads((out / "checkpoints" / "last" / "privacy.json").read_text())
    # the same noise multiplier, sampling rate and steps, accounted by Opacus alone
    reference = create_accountant(accountant)
    for _ in range(10):
        reference.step(noise_multiplier=saved["noise_multiplier"], sample_rate=16 / 180)
    expected = reference.get_epsilon(delta=1e-5)
    assert saved["records"] == 180 and saved["sample_rate"] == pytest.approx(16 / 180)
    assert saved["steps"] == 10
    assert saved["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert saved["epsilon"] <= 3.0 and saved["epsilon"] == pytest.approx(3.0, abs=0.05)
    logged = [r["epsilon"] for r in read_metrics(out / "metrics.jsonl") if "epsilon" in r]
    assert logged[-1] == pytest.approx(expected, rel=1e-5) and logged == sorted(logged)
    if accountant == "rdp":  # the exported model card carries the guarantee
        export = tmp_path / "hf"
        assert cli_main(["export", str(out / "checkpoints" / "last"), "--out", str(export)]) == 0
        card = (export / "README.md").read_text()
        assert f"DP-SGD: epsilon {saved['epsilon']:.3f} at delta 1e-05 (rdp accountant)" in card


def test_a_resumed_private_run_keeps_counting_and_matches_the_uninterrupted_one(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = write_records(tmp_path / "train.jsonl", n=100)
    noise = "--dp.noise_multiplier=1.2 --optim.schedule=constant".split()  # lr free of max_steps
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _dp_finetune(base, records, whole, *noise, "--train.max_steps=10") == 0
    assert _dp_finetune(base, records, cut, *noise, "--train.max_steps=5") == 0
    assert _dp_finetune(base, records, cut, *noise, "--train.max_steps=10", "--resume") == 0
    a = [r for r in read_metrics(whole / "metrics.jsonl") if "train/loss" in r]
    b = [r for r in read_metrics(cut / "metrics.jsonl") if "train/loss" in r]
    assert [r["train/loss"] for r in a] == pytest.approx([r["train/loss"] for r in b], abs=1e-6)
    spent = [json.loads((d / "checkpoints/last/privacy.json").read_text()) for d in (whole, cut)]
    assert spent[0]["epsilon"] == pytest.approx(spent[1]["epsilon"], rel=1e-9)
    assert spent[1]["steps"] == 10
    # Other privacy settings on resume: refused, the accounting would be wrong.
    capsys.readouterr()
    other = ["--dp.noise_multiplier=2", "--optim.schedule=constant"]
    assert _dp_finetune(base, records, cut, *other, "--train.max_steps=12", "--resume") == 2
    assert "privacy settings differ" in capsys.readouterr().err
    # ... and so is dropping dp: the run would go on without noise
    plain = ["--optim.schedule=constant", "--train.max_steps=12", "--dp.batch=null", "--resume"]
    assert _dp_finetune(base, records, cut, *plain) == 2
    assert "was trained with dp" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp.epsilon=8", "--dp.delta=0.1"], "dp.delta: 0.1 is not below 1 / 108"),
        (["--dp.epsilon=8", "--train.activation_checkpointing=true"], "activation_checkpointing"),
        (["--dp.epsilon=8", "--dp.batch=500"], "500 records per step is more than"),
        (["--dp.epsilon=8", "--train.max_steps=null", "--train.max_minutes=1"], "max_steps"),
        # class weights are the private records' label counts, outside the accounting
        (["--dp.epsilon=8", "--objective.class_weights=true"], "objective.class_weights: under"),
        # a label set read from the private records would be published with the model
        (["--dp.epsilon=8", "--objective.labels=null"], "objective.labels: under dp give the"),
        (
            ["--dp.epsilon=8", "--objective.labels=[neg, meh]"],
            "label 'pos' is not one of the model's labels (neg, meh)",
        ),
        # below RDP's floor at delta 1e-5 (about 0.103), which no noise reaches
        (["--dp.epsilon=0.1"], "dp.epsilon: 0.1 is below 0.103, the least the rdp accountant"),
        (["--dp.epsilon=0.001", "--dp.accountant=prv"], "dp.epsilon: 0.001 at dp.delta 1e-05 is"),
    ],
)
def test_bad_private_settings_are_refused_before_training(
    base: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    records = write_records(tmp_path / "train.jsonl", n=120)
    assert _dp_finetune(base, records, tmp_path / "run", "--train.max_steps=2", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_evaluation_data_cannot_be_the_training_data(
    base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = write_records(tmp_path / "train.jsonl", n=120)
    flags = ["--dp.epsilon=8", "--train.max_steps=2", f"--val={records}"]
    assert _dp_finetune(base, records, tmp_path / "run", *flags) == 2
    assert "evaluation data must be held out" in capsys.readouterr().err


def test_dp_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="dp.epsilon"):
        load_run_config(None, ["dp.epsilon=0"])
    # An infinite epsilon or noise promises nothing (and privacy.json would hold Infinity); an
    # infinite clipping bound clips nothing.
    for key in ("epsilon", "noise_multiplier", "max_grad_norm"):
        on = [] if key != "max_grad_norm" else ["dp.noise_multiplier=1"]
        with pytest.raises(ConfigError, match=f"dp.{key}: Input should be a finite number"):
            load_run_config(None, [*on, f"dp.{key}=inf"])
    with pytest.raises(ConfigError, match="not both"):
        load_run_config(None, ["dp.epsilon=1", "dp.noise_multiplier=1"])
    assert not DPConfig().enabled and DPConfig(noise_multiplier=1.0).enabled


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_private_pretraining_samples_windows(
    bytes_data: Path, tmp_path: Path, objective: str
) -> None:
    out = tmp_path / "run"
    preset_name = "bert-micro" if objective == "mlm" else "nano"
    args = ["pretrain", "--data", str(bytes_data), "--out", str(out)]
    args += [f"--model.preset={preset_name}", f"--objective.name={objective}", *TINY]
    args += ["--dp.noise_multiplier=1", "--dp.batch=8", "--train.max_steps=3"]
    assert cli_main(args) == 0
    saved = json.loads((out / "checkpoints" / "last" / "privacy.json").read_text())
    assert saved["unit"] == f"one disjoint training window of {bytes_data} ({objective})"
    assert saved["steps"] == 3 and math.isfinite(saved["epsilon"]) and saved["epsilon"] > 0


@pytest.mark.parametrize(
    ("task", "method"), [("tokens", "full"), ("classify", "freeze"), ("instruct", "lora")]
)
def test_every_fine_tuning_kind_trains_privately(
    bytes_data: Path, tmp_path: Path, task: str, method: str
) -> None:
    from ..train.test_finetune import write_conll

    long_base = tmp_path / "base"  # a chat template needs more context than TINY's 32
    tiny = [a if a != "--model.max_seq_len=32" else "--model.max_seq_len=96" for a in TINY]
    args = ["pretrain", "--data", str(bytes_data), "--out", str(long_base), "--model.preset=nano"]
    assert cli_main([*args, *tiny]) == 0
    if task == "tokens":
        records = write_conll(tmp_path / "train.txt")
    elif task == "classify":
        records = write_records(tmp_path / "train.jsonl", n=80)
    else:
        records = tmp_path / "sft.json"
        rows = [
            {"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}
            for w in ["cat", "dog", "sun", "sea", "red", "map", "owl", "ink"] * 5
        ]
        records.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "run"
    finetune = ["finetune", task, "--init", str(long_base / "checkpoints" / "last")]
    finetune += ["--train", str(records), "--out", str(out), f"--adapt.method={method}"]
    finetune += ["--train.batch_size=4", "--dp.batch=8", "--dp.noise_multiplier=1"]
    finetune += {
        "tokens": ["--objective.labels=[O, B-LOC, B-PER]"],
        "classify": ["--objective.labels=[neg, pos]"],
    }.get(task, [])
    finetune += ["--train.max_steps=3", "--train.eval_every=3", "--train.progress=false"]
    assert cli_main(finetune) == 0
    saved = json.loads((out / "checkpoints" / "last" / "privacy.json").read_text())
    assert saved["steps"] == 3 and saved["epsilon"] > 0 and task in saved["unit"]
