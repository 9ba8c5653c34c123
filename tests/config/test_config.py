"""Run configs: unknown keys, types, presets, cross-section rules, overrides, YAML files,
recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

from graft.config import (
    DEFAULT_MAX_STEPS,
    AdaptConfig,
    RunConfig,
    TrainConfig,
    load_finetune_config,
    load_run_config,
    validate_run_config,
)
from graft.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for pattern in ("*.yaml", "*.yml") for p in (REPO / "configs").rglob(pattern))
# configs/finetune/TASK-*.yaml are fine-tuning recipes (`graft finetune TASK --config ...`).
PRETRAIN_RECIPES = [p for p in RECIPES if p.parent.name != "finetune"]
FINETUNE_RECIPES = [p for p in RECIPES if p.parent.name == "finetune"]
LIMIT = ["train.max_steps=5"]


def config_error(overrides: list[str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message  # the CLI prints it as one line
    return message


# -- unknown keys, types, presets, choices ----------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "close"),
    [
        ("train.max_step=5", "train.max_step", "max_steps"),
        ("optim.lrr=0.1", "optim.lrr", "lr"),
        ("model.d_modle=64", "model.d_modle", "d_model"),
        ("data.pth=x", "data.pth", "path"),
        ("trian.max_steps=5", "trian", "train"),
    ],
)
def test_unknown_key_names_the_dotted_key_and_suggests_the_close_match(override, key, close):
    message = config_error([override, *LIMIT])
    assert f"{key}: unknown key" in message
    assert f"did you mean {close!r}" in message


def test_unknown_key_lists_the_valid_keys_of_its_section():
    message = config_error(["optim.learning_rate=0.1", *LIMIT])
    assert "optim.learning_rate" in message
    for key in ("lr", "warmup_steps", "weight_decay", "grad_clip"):
        assert key in message
    assert "max_steps" not in message.split("optim.learning_rate", 1)[1]  # another section's key


def test_model_keys_include_preset_among_the_valid_keys():
    assert "preset" in config_error(["model.prset=nano", *LIMIT])


@pytest.mark.parametrize(
    ("override", "key", "shown"),
    [
        ("train.max_steps=five", "train.max_steps", "'five'"),
        ("train.compile=maybe", "train.compile", "'maybe'"),
        ("train.seed=1.5", "train.seed", "1.5"),
        ("model.dropout=2.0", "model.dropout", "2.0"),
        ("train.batch_size=0", "train.batch_size", "0"),
    ],
)
def test_wrong_type_or_range_names_the_key_and_the_bad_value(override, key, shown):
    overrides = [override] if override.startswith("train.max_steps") else [override, *LIMIT]
    message = config_error(overrides)
    assert f"{key}: " in message
    assert message.endswith(f"got {shown}") or f"got {shown};" in message


def test_unknown_preset_suggests_the_closest_and_lists_them_all():
    message = config_error(["model.preset=nanno", *LIMIT])
    assert "model.preset" in message and "'nanno'" in message
    assert "did you mean 'nano'" in message
    assert "llama-micro" in message and "gpt2-124m" in message


@pytest.mark.parametrize("value", ["[nano]", "{a: 1}"])
def test_a_preset_that_is_not_a_name_is_a_config_error(value):
    # BUG: `name not in PRESETS` raises TypeError (unhashable) for a list or mapping.
    message = config_error([f"model.preset={value}", *LIMIT])
    assert "model.preset" in message


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("optim.schedule=cos", ["'cosine'", "'linear'", "'constant'"]),
        ("model.norm=batchnorm", ["'layernorm'", "'rmsnorm'"]),
        ("train.precision=fp16", ["'auto'", "'fp32'", "'bf16'"]),
        ("objective.name=bert", ["'clm'", "'mlm'", "'mlm+nsp'", "'denoise'", "'mix'"]),
    ],
)
def test_literal_fields_list_the_valid_choices(override, choices):
    message = config_error([override, *LIMIT])
    key, _, value = override.partition("=")
    assert f"{key}: " in message and repr(value) in message
    for choice in choices:
        assert choice in message


def test_several_problems_are_reported_in_one_error():
    message = config_error(
        ["train.max_steps=five", "optim.lrr=0.1", "model.d_modle=64", "optim.schedule=cos"]
    )
    for key in ("train.max_steps", "optim.lrr", "model.d_modle", "optim.schedule"):
        assert f"{key}: " in message
    assert message.count(";") >= 3


def test_an_unknown_preset_is_reported_together_with_the_other_problems():
    # BUG: the preset check raises on its own, so fixing it only reveals the next error.
    message = config_error(["model.preset=nanno", "optim.lrr=0.1", "train.max_steps=five"])
    for key in ("model.preset", "optim.lrr", "train.max_steps"):
        assert f"{key}: " in message


# -- cross-section rules and limits ------------------------------------------------------------


def test_train_seq_len_longer_than_the_model_context_is_refused():
    message = config_error(["model.max_seq_len=64", "train.seq_len=128", *LIMIT])
    assert "train.seq_len (128)" in message and "model.max_seq_len (64)" in message
    assert load_run_config(None, ["model.max_seq_len=64", "train.seq_len=64", *LIMIT]).seq_len == 64
    assert load_run_config(None, ["model.max_seq_len=64", *LIMIT]).seq_len == 64


def test_heads_must_divide_the_width_and_kv_heads_the_heads():
    assert "n_heads (3)" in config_error(["model.d_model=64", "model.n_heads=3", *LIMIT])
    assert "n_kv_heads (3)" in config_error(["model.n_heads=4", "model.n_kv_heads=3", *LIMIT])


def test_a_run_without_any_limit_trains_the_default_steps_train_section_or_not():
    given = load_run_config(None, ["train.out_dir=runs/x"]).train
    assert given.max_steps == DEFAULT_MAX_STEPS == RunConfig().train.max_steps
    assert given.max_tokens is None and given.max_minutes is None
    description = TrainConfig.model_fields["max_steps"].description or ""
    assert str(DEFAULT_MAX_STEPS) in description  # stated on the field


@pytest.mark.parametrize(
    "limit", ["train.max_steps=3", "train.max_tokens=1000", "train.max_minutes=0.5"]
)
def test_any_one_limit_is_enough(limit):
    assert isinstance(load_run_config(None, ["train.out_dir=runs/x", limit]), RunConfig)


# -- dotted overrides --------------------------------------------------------------------------


def test_overrides_convert_values_as_yaml_does():
    config = load_run_config(
        None,
        [
            "train.max_steps=5",
            "train.compile=true",
            "model.n_kv_heads=null",
            "train.max_minutes=1.5",
            "optim.lr=3e-4",
            "data.path=runs/data",
            "train.device=cpu",
            "model.d_ff=",
        ],
    )
    assert config.train.max_steps == 5 and type(config.train.max_steps) is int
    assert config.train.compile is True
    assert config.model.n_kv_heads is None
    assert config.train.max_minutes == 1.5
    assert config.optim.lr == pytest.approx(3e-4)
    assert config.data.path == Path("runs/data")
    assert config.train.device == "cpu"
    assert config.model.d_ff is None  # an empty value is null


def test_overrides_accept_leading_dashes_and_win_over_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  preset: nano\n  n_layers: 2\ntrain:\n  max_steps: 10\n  seed: 7\n")
    config = load_run_config(
        recipe, ["--train.max_steps=3", "model.n_layers=1", "model.preset=micro"]
    )
    assert (config.train.max_steps, config.train.seed) == (3, 7)
    assert (config.model.n_layers, config.model.d_model) == (
        1,
        256,
    )  # micro's width, the override's depth


@pytest.mark.parametrize("item", ["train.max_steps", "max_steps=5", "=5", "--train"])
def test_malformed_override_is_refused_with_an_example(item):
    message = config_error([item])
    assert repr(item) in message and "--section.key=value" in message


def test_an_override_below_a_value_is_refused():
    message = config_error(["train.max_steps=5", "train.max_steps.x=1"])
    assert "train.max_steps.x=1" in message and "max_steps is not a section" in message


# -- YAML files --------------------------------------------------------------------------------


def test_invalid_yaml_reports_file_and_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model:\n  preset: nano\ntrain:\n  max_steps: [1\n  seed: 2\n")
    message = config_error(path=recipe)
    assert message.startswith(f"{recipe}:5: not valid YAML")


def test_errors_in_a_file_name_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  max_step: 5\n")
    message = config_error(path=recipe)
    assert message.startswith(f"{recipe}: train.max_step: unknown key")


def test_errors_in_an_override_name_the_command_line_not_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  batch_size: x\n")
    message = config_error(["train.max_steps=abc", "train.max_step=5"], path=recipe)
    mine, _, theirs = message.partition("; command line: ")
    assert mine.startswith(f"{recipe}: train.batch_size: ") and "max_step" not in mine
    assert theirs.startswith("train.max_steps: ") and "train.max_step: unknown key" in theirs
    recipe.write_text("train:\n  seed: 1\n")
    assert config_error(["train.max_steps=abc"], path=recipe).startswith(
        "command line: train.max_steps: "
    )
    # A rule across sections is blamed on the key it starts with.
    assert config_error(["train.seq_len=4096"], path=recipe).startswith(
        "command line: train.seq_len (4096) exceeds model.max_seq_len"
    )
    # A misspelt section: the problem is the section, which only the override named.
    assert config_error(["trian.max_steps=20"], path=recipe).startswith(
        "command line: trian: unknown key"
    )


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("train:\n  max_steps: 5\ntrain:\n  batch_size: 2\n")
    assert config_error(path=recipe) == (
        f"{recipe}:3: not valid YAML (the key 'train' is given twice)"
    )
    recipe.write_text("train:\n  max_steps: 5\n  max_steps: 7\n")
    assert "the key 'max_steps' is given twice" in config_error(path=recipe)


@pytest.mark.parametrize(
    "override",
    [
        "train.max_steps=true",
        "optim.lr=on",
        "train.max_minutes=yes",
        "model.dropout=false",
        "model.rope_scaling={factor: true}",
    ],
)
def test_a_boolean_is_not_read_as_a_number(override):
    key = override.partition("=")[0]
    key = "model.rope_scaling.factor" if "rope" in key else key
    preset = ["model.preset=llama-nano"] if "rope" in override else []
    message = config_error([override, *preset])
    assert f"{key}: expected a number, got the boolean " in message


def test_a_boolean_field_still_reads_yaml_booleans():
    config = load_run_config(None, ["train.compile=yes", "data.mask_doc_boundaries=on"])
    assert config.train.compile is True and config.data.mask_doc_boundaries is True


def test_a_folder_given_as_the_config_is_named_as_a_folder(tmp_path):
    assert config_error(path=tmp_path) == (
        f"{tmp_path}: a folder, not a config file (a YAML file is expected)"
    )


def test_a_yaml_file_that_is_not_a_mapping_is_refused(tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- model\n- train\n")
    assert "expected a mapping of sections" in config_error(path=recipe)


def test_a_missing_config_file_is_named(tmp_path):
    assert (
        config_error(path=tmp_path / "nope.yaml")
        == f"{tmp_path / 'nope.yaml'}: no such config file"
    )


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    # BUG: read_text raises UnicodeDecodeError, which escapes as a traceback.
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# réglages\ntrain:\n  max_steps: 5\n".encode("latin-1"))
    assert str(recipe) in config_error(path=recipe)


def test_an_empty_file_gives_the_defaults(tmp_path):
    recipe = tmp_path / "empty.yaml"
    recipe.write_text("# nothing here\n")
    assert load_run_config(recipe) == RunConfig()


def test_to_yaml_loads_back_equal(tmp_path):
    config = validate_run_config(
        {
            "model": {
                "preset": "llama-nano",
                "max_seq_len": 64,
                "n_kv_heads": None,
                "dropout": 0.1,
            },
            "data": {"path": "runs/data/x", "mask_doc_boundaries": True},
            "optim": {"lr": 3e-4, "schedule": "linear", "eps": 1e-9},
            "train": {
                "out_dir": "runs/y",
                "max_tokens": 10_000,
                "max_minutes": 2.5,
                "seq_len": 48,
                "compile": True,
            },
        }
    )
    recipe = tmp_path / "resolved.yaml"
    recipe.write_text(config.to_yaml())
    assert load_run_config(recipe) == config
    assert "preset" not in config.to_yaml()  # the resolved config spells the preset out


# A setting for each objective that its variant or mixture uses, so that the written config holds
# both the given values and the defaults of the knobs the objective refuses when they are chosen.
OBJECTIVE_RUNS: dict[str, list[str]] = {
    "clm": [],
    "mlm": ["model.preset=bert-nano"],
    "nsp": ["model.preset=bert-nano"],
    "mlm+nsp": ["model.preset=bert-nano", "objective.whole_word_mask=true"],
    "denoise": ["objective.denoise_style=bart"],
    "mix": ["objective.mix={clm: 1, denoise: 1}", "objective.denoise.denoise_style=bart"],
}


def test_every_objective_is_covered_by_the_round_trip() -> None:
    from graft.config import OBJECTIVES

    shards = {name for name, member in OBJECTIVES.items() if member.reads == "shards"}
    assert set(OBJECTIVE_RUNS) == shards


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_RUNS))
def test_every_objectives_resolved_config_loads_back_equal(objective: str, tmp_path: Path) -> None:
    """--print-config and a run's config.yaml write every field, defaults included: the
    knobs an objective refuses when chosen (nsp's masking, a part outside the mix) must not be
    refused when they only hold their defaults."""
    overrides = [f"objective.name={objective}", *OBJECTIVE_RUNS[objective], *LIMIT]
    config = load_run_config(None, overrides)
    written = tmp_path / "config.yaml"
    written.write_text(config.to_yaml())
    assert load_run_config(written) == config


@pytest.mark.parametrize("task", ["classify", "tokens", "instruct", "seq2seq", "qa"])
def test_every_tasks_resolved_config_loads_back_equal(task: str, tmp_path: Path) -> None:
    encoder = ["model.preset=bert-nano"] if task == "qa" else []
    config = load_finetune_config(task, None, encoder)
    written = tmp_path / "config.yaml"
    written.write_text(config.to_yaml())
    assert load_finetune_config(task, written) == config


# -- every recipe shipped in configs/ ----------------------------------------------------------


def test_configs_folder_holds_recipes():
    assert RECIPES, f"no YAML recipes found under {REPO / 'configs'}"


def test_every_recipe_is_for_pretrain_or_a_fine_tuning_task():
    assert len(PRETRAIN_RECIPES) + len(FINETUNE_RECIPES) == len(RECIPES) and FINETUNE_RECIPES
    tasks = {p.stem.split("-")[0] for p in FINETUNE_RECIPES}
    assert tasks == {"classify", "tokens", "instruct", "qa", "seq2seq"}, tasks


@pytest.mark.parametrize(
    "recipe", FINETUNE_RECIPES, ids=[str(p.relative_to(REPO)) for p in FINETUNE_RECIPES]
)
def test_every_fine_tuning_recipe_loads_for_its_task(recipe):
    task = recipe.stem.split("-")[0]
    given = ["train.init=runs/x", "data.train_file=x.csv"]  # qa's encoder comes with the init
    config = load_finetune_config(task, recipe, given)
    assert config.objective.name == task
    assert load_finetune_config(task, None, given) != config  # the recipe changed something


@pytest.mark.parametrize(
    "recipe", PRETRAIN_RECIPES, ids=[str(p.relative_to(REPO)) for p in PRETRAIN_RECIPES]
)
def test_every_shipped_recipe_loads_validates_and_round_trips(recipe, tmp_path):
    config = load_run_config(recipe)
    assert isinstance(config, RunConfig)
    assert config.seq_len <= config.model.max_seq_len
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(config.to_yaml())
    assert load_run_config(resolved) == config


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["objective.name=mlm"],
            "objective mlm trains an encoder: model.attention must be bidirectional",
        ),
        (
            ["objective.name=clm", "model.preset=bert-nano"],
            "objective clm trains a decoder: model.attention must be causal",
        ),
        (
            [
                "objective.name=mlm+nsp",
                "model.preset=bert-nano",
                "model.nsp_head=false",
                "model.pooler=false",
            ],
            "objective mlm+nsp needs model.nsp_head: true",
        ),
        (
            ["objective.name=mix", "objective.mix={clm: 0, denoise: 0}"],
            "weights must be >= 0 and sum to a positive number",
        ),
        (["objective.name=mix", "objective.mix={nsp: 1}"], "'nsp' cannot be mixed"),
    ],
)
def test_objective_and_model_must_fit(overrides, expected):
    assert expected in config_error([*overrides, *LIMIT])


def test_encoder_preset_with_mlm_nsp_is_accepted():
    config = load_run_config(None, ["objective.name=mlm+nsp", "model.preset=bert-micro", *LIMIT])
    assert config.model.attention == "bidirectional" and config.model.nsp_head


# -- objectives: each one's own knobs, and the commands that can run it ------------------------


def finetune_error(task: str, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_finetune_config(task, None, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_an_option_of_another_objective_names_the_key_and_the_objective():
    # BUG: the flat objective section took every objective's knobs, and ignored the others'.
    message = finetune_error("classify", ["objective.mask_probability=0.5"])
    assert "objective.mask_probability: unknown key for objective classify" in message
    assert "class_weights" in message  # the keys classify does take
    message = config_error(["objective.name=clm", "objective.denoise_style=bart", *LIMIT])
    assert "objective.denoise_style: unknown key for objective clm" in message


def test_an_unknown_objective_key_suggests_the_close_match():
    message = config_error(
        ["objective.name=mlm", "objective.mask_probabilty=0.2", "model.preset=bert-nano", *LIMIT]
    )
    assert "objective.mask_probabilty: unknown key for objective mlm" in message
    assert "did you mean 'mask_probability'" in message


def test_nsp_alone_refuses_the_masking_options_only_mlm_nsp_uses():
    base = ["model.preset=bert-nano", *LIMIT]
    message = config_error(["objective.name=nsp", "objective.mask_probability=0.2", *base])
    assert "objective.mask_probability" in message and "mlm+nsp" in message
    config = load_run_config(
        None, ["objective.name=mlm+nsp", "objective.whole_word_mask=true", *base]
    )
    assert config.objective.whole_word_mask


def test_mix_parts_take_their_own_settings_and_only_for_parts_in_the_mix():
    config = load_run_config(
        None,
        [
            "objective.name=mix",
            "objective.mix={clm: 1, denoise: 1}",
            "objective.denoise.denoise_style=bart",
            *LIMIT,
        ],
    )
    assert config.objective.denoise.denoise_style == "bart"
    message = config_error(
        [
            "objective.name=mix",
            "objective.mix={clm: 1}",
            "objective.mlm.mask_probability=0.3",
            *LIMIT,
        ]
    )
    assert "objective.mlm" in message and "not in objective.mix" in message


def test_denoise_noise_density_defaults_by_style():
    assert load_run_config(None, ["objective.name=denoise", *LIMIT]).objective.noise_density == 0.15
    bart = load_run_config(None, ["objective.name=denoise", "objective.denoise_style=bart", *LIMIT])
    assert bart.objective.noise_density == 0.3


def test_pretrain_refuses_a_fine_tuning_objective():
    # BUG: `graft pretrain --objective classify` validated, wrote config.yaml, then crashed.
    message = config_error(["objective.name=classify", *LIMIT])
    assert "objective.name" in message and "classify" in message and "pretrain" in message


def test_finetune_refuses_a_pre_training_objective():
    message = finetune_error("classify", ["objective.name=mlm"])
    assert "objective.name" in message and "mlm" in message and "finetune" in message


def test_finetune_monitors_each_task_s_own_metric():
    expected = {"classify": "val/macro_f1", "tokens": "val/entity_f1", "instruct": "val/loss"}
    for task, monitor in expected.items():
        assert load_finetune_config(task).train.monitor == monitor


def test_an_unknown_objective_is_offered_those_the_command_runs():
    message = config_error(["objective.name=bogus"])
    assert "'clm'" in message and "'mix'" in message and "'classify'" not in message


# -- settings a command would ignore are refused --------------------------------------------


@pytest.mark.parametrize(
    "overrides, refusal",
    [
        (["data.redact=all"], "data.redact: a fine-tuning setting; graft pretrain reads prepared"),
        (["data.train_file=x.csv"], "data.train_file: a fine-tuning setting"),
        (["train.init=ckpt", "adapt.from_scratch=true"], "adapt.from_scratch: a fine-tuning"),
        (["adapt.method=lora"], "adapt.method: a fine-tuning setting"),
        (
            ["objective.name=mlm", "model.preset=bert-nano", "data.mask_doc_boundaries=true"],
            "data.mask_doc_boundaries: objective mlm does not read it",
        ),
        (["data.replay_fraction=0.5"], "data.replay_fraction: nothing to replay"),
        (["dp.max_grad_norm=0.5"], "dp.max_grad_norm: private training is off"),
        (["dp.clipping=ghost"], "dp.clipping: private training is off"),
        (["train.nonfinite_limit=3"], "train.nonfinite_limit: counts skipped steps"),
    ],
)
def test_pretrain_refuses_a_setting_it_would_ignore(overrides, refusal):
    """Each was accepted and did nothing: a run believed redacted, private or from scratch."""
    assert f"command line: {refusal}" in config_error([*overrides, *LIMIT])


@pytest.mark.parametrize(
    "task, overrides, refusal",
    [
        ("classify", ["data.path=prepared"], "data.path: a pre-training setting"),
        ("classify", ["data.replay_path=general"], "data.replay_path: a pre-training"),
        ("tokens", ["data.text_field=body"], "data.text_field: task tokens does not read it"),
        ("instruct", ["data.label_field=reply"], "data.label_field: task instruct does not"),
        ("classify", ["dp.batch=8"], "dp.batch: private training is off"),
        # a setting of one adaptation method, given with another (full is the default)
        ("classify", ["adapt.lora_rank=16"], "adapt.lora_rank: adapt.method full does not read"),
        (
            "classify",
            ["adapt.method=freeze", "adapt.lora_targets=[q_proj]"],
            "adapt.lora_targets: adapt.method freeze does not read it (lora does)",
        ),
        ("tokens", ["adapt.lora_alpha=32"], "adapt.lora_alpha: adapt.method full does not"),
        ("classify", ["adapt.lora_dropout=0"], "adapt.lora_dropout: adapt.method full does"),
        (
            "classify",
            ["adapt.method=lora", "adapt.trainable_blocks=2"],
            "adapt.trainable_blocks: adapt.method lora does not read it (freeze does)",
        ),
    ],
)
def test_finetune_refuses_a_setting_it_would_ignore(task, overrides, refusal):
    init = ["train.init=ckpt", "data.train_file=x.csv"]
    assert refusal in finetune_error(task, [*init, *overrides])


def test_the_settings_a_run_uses_load_and_defaults_written_out_are_no_choice():
    assert load_run_config(None, ["data.mask_doc_boundaries=true", "data.replay_path=g", *LIMIT])
    assert load_run_config(
        None, ["objective.name=mix", "objective.mix={clm: 1}", "data.mask_doc_boundaries=true"]
    )
    assert load_run_config(None, ["dp.epsilon=8", "dp.delta=1e-6", *LIMIT]).dp.delta == 1e-6
    classify = ["train.init=c", "data.train_file=x", "data.text_field=body"]
    lora = ["adapt.method=lora", "adapt.lora_rank=4", "adapt.lora_targets=[q_proj]"]
    assert load_finetune_config("classify", None, [*classify, *lora]).data.text_field == "body"
    freeze = ["adapt.method=freeze", "adapt.trainable_blocks=0"]
    assert load_finetune_config("classify", None, [*classify, *freeze]).adapt.trainable_blocks == 0
    # another method's settings at their defaults, as a run's written config.yaml holds them
    defaults = [f"adapt.{k}={v}" for k, v in AdaptConfig().model_dump(mode="json").items()]
    for method in ("full", "freeze", "lora"):
        settings = [*classify, *defaults, f"adapt.method={method}"]
        assert load_finetune_config("classify", None, settings).adapt.method == method
    for task in ("tokens", "instruct", "seq2seq", "qa"):  # every task samples its records
        sampled = ["train.init=c", "data.train_file=x", "data.max_train_examples=5"]
        assert load_finetune_config(task, None, sampled).data.max_train_examples == 5
    # a resolved config holds every field at its default: it loads back, for either command
    assert load_run_config(None, ["data.train_file=null", "dp.delta=1e-5", "adapt.method=full"])


def test_a_config_built_in_python_is_refused_alike(tmp_path):
    """pretrain and finetune check what the loaders check: a hand-built config with a setting
    the command ignores trained, and redacted nothing."""
    from graft.config import DataConfig, RunConfig, TrainConfig
    from graft.train.finetune import finetune
    from graft.train.pretrain import pretrain

    train = TrainConfig(out_dir=tmp_path / "run", max_steps=1)
    with pytest.raises(ConfigError, match="data.redact: a fine-tuning setting"):
        pretrain(RunConfig(data=DataConfig(redact=("email",)), train=train))
    tuned = load_finetune_config("classify", None, ["train.init=c", "data.train_file=x"])
    with pytest.raises(ConfigError, match="data.path: a pre-training setting"):
        data = tuned.data.model_copy(update={"path": tmp_path})
        finetune(tuned.model_copy(update={"data": data}))
    assert not (tmp_path / "run").exists()
