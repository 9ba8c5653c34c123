"""Hostile checkpoints: chat templates written to exhaust memory or time, and files slipped into a
saved checkpoint after its manifest was written.

A template is code from whoever made the checkpoint, run on every chat request and every training
conversation. Each one here tries another way to grow a value or to spin; each must be refused
with one line, quickly and without building anything large (Python's own allocations are traced:
before the bounds, `'a' * 400000000` alone allocated 1.6 GB). Real templates in the styles of
common Hub models must render exactly as in Jinja's unbounded sandbox, also for a conversation of
1.4 million characters.
"""

from __future__ import annotations

import json
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import jinja2
import jinja2.ext
import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from graft.checkpoint import load_model, save_checkpoint
from graft.data import template_sandbox
from graft.data.chat import DEFAULT_CHAT_TEMPLATE, render_chat
from graft.data.tokenizer import Tokenizer, bytes_tokenizer
from graft.errors import CheckpointError, DataError
from graft.model.config import ModelConfig
from graft.model.transformer import LanguageModel

Tally = Callable[[str, str, int], None]
USER = [{"role": "user", "content": "hello"}]
# The deadline is shortened for the template that reaches it: the same mechanism, a shorter fuse
# (test_the_deadline_is_cpu_time_of_the_rendering_thread waits for the real one).
TEST_SECONDS = 0.2
# Peak of Python's allocations while one template is refused. The bounds let a rendering build
# MAX_RENDER_WORK (32 M) characters in all, one byte each in these ASCII templates, most of which
# it drops as it goes; what any template here holds at once is far less.
PEAK_BYTES = 64_000_000

# (what it tries, the template, what the refusal says)
HOSTILE = [
    ("repeat a string", "{{ 'a' * 400000000 }}", "builds a value of more than"),
    ("repeat in steps", "{{ 'ab' * 100 * 100 * 100 * 100 * 100 }}", "builds a value of more than"),
    (
        "double with ~",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s }}",
        "builds a value of more than",
    ),
    (
        "double a list's references",
        "{% set ns = namespace(l=[1]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}"
        "{% endfor %}{{ ns.l }}",
        "builds a value of more than",
    ),
    ("pad with a filter", "{{ 'x' | center(400000000) }}", "builds a value of more than"),
    ("pad with a method", "{{ 'x'.ljust(400000000) }}", "builds a value of more than"),
    ("pad bytes", "{{ 'x'.encode().center(400000000) }}", "builds a value of more than"),
    ("format width", "{{ '{:>{w}}'.format(1, w=400000000) }}", "builds a value of more than"),
    ("printf width", "{{ '%*d' % (400000000, 1) }}", "builds a value of more than"),
    ("replace", "{{ ('a' * 1000000) | replace('a', 'a' * 1000) }}", "builds a value of more than"),
    (
        "join",
        "{{ range(100) | map('string') | join('a' * 100000) }}",
        "builds a value of more than",
    ),
    ("indent", "{{ ('x\\n' * 100000) | indent(100000) }}", "builds a value of more than"),
    ("json indent", "{{ [[[[[[1]]]]]] | tojson(indent=1000000) }}", "builds a value of more than"),
    ("batch", "{{ [1] | batch(400000000, 0) | list }}", "builds a value of more than"),
    ("power", "{{ 2 ** 400000000 }}", "computes a number of more than"),
    (
        "square a number",
        "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
        "{% endfor %}",
        "computes a number of more than",
    ),
    (
        "keep copies in a macro's text",
        "{% macro m() %}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}{% endmacro %}"
        "{% for i in range(1000) %}{% set x = m() %}{% endfor %}",
        "characters of values",
    ),
    (
        "keep copies in a list",
        "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
        "{% set ns.l = ns.l + [messages[0].content * 1000 ~ i] %}{% endfor %}",
        "characters of values",
    ),
    (
        "print without end",
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 100 }}"
        "{% endfor %}{% endfor %}",
        "output exceeds",
    ),
    (
        "loop without a body",
        "{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
        "took longer than",
    ),
    (
        "recurse",
        "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "RecursionError",
    ),
]


@pytest.mark.parametrize(("what", "template", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_template_is_refused_in_one_line(
    what: str, template: str, says: str, tally: Tally, monkeypatch: pytest.MonkeyPatch
):
    if says == "took longer than":
        monkeypatch.setattr(template_sandbox, "MAX_RENDER_SECONDS", TEST_SECONDS)
    tally("hostile templates:", "tried", 1)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError, match=f"^chat template.*{says}") as refused:
            render_chat(template, USER)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(refused.value)
    assert peak < PEAK_BYTES, f"{what}: {peak / 1e6:.0f} MB allocated before the refusal"
    # Even under tracemalloc, which slows allocation several times.
    assert time.perf_counter() - started < 5, what
    tally("hostile templates:", "refused in one line", 1)


def test_the_deadline_is_cpu_time_of_the_rendering_thread():
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.thread_time()
    with pytest.raises(DataError, match=r"took longer than 1.0 s \(CPU time\)"):
        render_chat(spin, USER)
    assert 1.0 <= time.thread_time() - started < 2.0


# -- real templates render as they always did --------------------------------------------------

# In the styles of common Hub models (ChatML, Llama 3, Mistral, a reasoning model's template with
# namespace(), reversed slices, split() and tojson), written for this test.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = '<|begin_of_text|>' + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL = (
    "{{ '<s>' }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('roles must alternate user/assistant') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{{ '[INST] ' + system + '\n\n' + message['content'] }}"
    "{% else %}{{ '[INST] ' + message['content'] }}{% endif %}{{ ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
REASONING = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}\n"
    "{%- set ns = namespace(last_user=messages|length - 1) %}\n"
    "{%- for message in messages[::-1] %}\n"
    "    {%- set index = (messages|length - 1) - loop.index0 %}\n"
    "    {%- if message.role == 'user' and index < ns.last_user %}"
    "{% set ns.last_user = index %}{% endif %}\n"
    "{%- endfor %}\n"
    "{%- for message in messages %}\n"
    "    {%- set content = message.content if message.content is string else '' %}\n"
    "    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == 'assistant' %}\n"
    "        {%- set thought = '' %}\n"
    "        {%- if '</think>' in content %}\n"
    "            {%- set thought = content.split('</think>')[0].split('<think>')[-1] %}\n"
    "            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}\n"
    "        {%- endif %}\n"
    "        {%- if loop.index0 > ns.last_user and thought %}\n"
    "            {{- '<|im_start|>assistant\\n<think>' + thought + '</think>\\n\\n' + content }}\n"
    "        {%- else %}\n"
    "            {{- '<|im_start|>assistant\\n' + content }}\n"
    "        {%- endif %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
    "{{- '<!-- ' ~ (messages | map(attribute='role') | list | tojson(indent=2)) ~ ' -->' }}"
    "{{- '%s:%d' % ('turns', messages|length) ~ '{:>8}'.format('end') }}"
)

# What the bounds rewrite (printing, literals, slices, loops) and hook (operators, calls, filters),
# in the ways templates use them.
FEATURES = (
    "{% macro box(x) %}[{{ x }}|{{ caller() if caller else '' }}]{% endmacro %}"
    "{% for m in messages if m.role != 'system' %}"
    "{{ loop.index }}/{{ loop.length }}{{ '!' if loop.last }}{{ loop.revindex }}"
    "{{ loop.cycle('a', 'b') }}{% if loop.changed(m.role) %}*{% endif %}"
    "{% if m.content == 'skip' %}{% continue %}{% endif %}"
    "{% call box(m.role) %}{{ m.content[::-1] }}{{ m.content[1:3] }}{% endcall %}"
    "{% if loop.index > 5 %}{% break %}{% endif %}"
    "{% else %}none{% endfor %}"
    "{% set block %}{% for k, v in {'a': 1, 'b': (2, 3)}.items() %}{{ k }}={{ v }};{% endfor %}"
    "{% endset %}{{ block }}"
    "{% filter upper %}{{ messages|length }} tail{% endfilter %}"
    "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
    "{% set ns.s = ns.s ~ m.role[0] %}{% endfor %}{{ ns.n }}{{ ns.s }}"
    "{% for item in [[1, [2, 3]], [4, [5]]] recursive %}"
    "{% if item is iterable %}({{ loop(item) }}){% else %}{{ item }}{% endif %}{% endfor %}"
    "{{ '%05.1f|%-4s|%x' % (3.14159, 'ab', 255) }}{{ '{:>6}|{:^5}|{!r}'.format('r', 'c', 'q') }}"
    "{{ [3, 1, 2]|sort|join(',') }}{{ range(5)|sum }}{{ [[1], [2]]|sum(start=[]) }}"
    "{{ 'x\ny'|indent(2, first=True) }}{{ 'hello world'|center(15) }}{{ 'abc'|replace('b', 'BB') }}"
    "{{ range(7)|batch(3, 0)|list }}{{ range(7)|slice(3)|list }}{{ 'a b c'|wordwrap(2) }}"
    "{{ {'k': [1, 'é']}|tojson }}{{ {'k': 2}|tojson(indent=2) }}{{ '%s-%s'|format(1, 2) }}"
    "{{ 2 ** 10 }}{{ 7 // 2 }}{{ 7 % 3 }}{{ -3 }}{{ 'ab' * 3 }}{{ [0] * 3 }}{{ (1, 2) + (3,) }}"
    "{{ 'a-b'.split('-') }}{{ ' x '.strip() }}{{ '-'.join(['p', 'q']) }}{{ dict(a=1) }}{{ none }}"
    "{% set t = cycler('x', 'y') %}{{ t.next() }}{{ t.next() }}"
    "{% set j = joiner('+') %}{{ j() }}a{{ j() }}b{{ undefined_name }}"
)


def unbounded(template: str) -> jinja2.Template:
    """The template in Jinja's sandbox as graft configured it before the bounds."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(
        value, ensure_ascii=False, indent=indent
    )

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    environment.globals["raise_exception"] = raise_exception
    return environment.from_string(template)


def test_real_templates_render_as_without_the_bounds():
    chat = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        answer = f"<think>\nabout {i}\n</think>\n\nanswer {i} é"
        chat += [
            {"role": "user", "content": f"question {i}?"},
            {"role": "assistant", "content": answer},
        ]
    # 1.4 million characters: near the output bound, which must still leave room for it.
    long = [{"role": "user", "content": "word " * 280_000}, {"role": "assistant", "content": "ok"}]
    for template in (DEFAULT_CHAT_TEMPLATE, CHATML, LLAMA3, MISTRAL, REASONING, FEATURES):
        reference = unbounded(template)
        for messages in (chat, long, chat[1:3]):
            for prompt in (False, True):
                expected = reference.render(
                    messages=messages, add_generation_prompt=prompt, eos_token="</s>"
                )
                got = render_chat(
                    template,
                    messages,
                    add_generation_prompt=prompt,
                    special_tokens={"eos_token": "</s>"},
                )
                assert got == expected


# -- files slipped into a saved checkpoint ------------------------------------------------------


def save(directory: Path, tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, max_seq_len=16, d_model=16, n_layers=1, n_heads=2
    )
    return save_checkpoint(
        directory, model=LanguageModel(config), tokenizer=tokenizer, run_config_yaml="{}\n"
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint with a chat template of its own (so tokenizer_config.json is a listed file).
    Read-only: tests copy it."""
    tokenizer = bytes_tokenizer()
    tokenizer.chat_template = CHATML
    return save(tmp_path_factory.mktemp("hostile") / "ckpt", tokenizer)


SLIPPED = [
    ("chat_template.jinja", "{{ 'a' * 400000000 }}"),
    ("special_tokens_map.json", json.dumps({"eos_token": "<|im_end|>"})),
    ("added_tokens.json", json.dumps({"<|evil|>": 300})),
    ("training_state/notes.txt", "anything at all"),
]


@pytest.mark.parametrize(("name", "text"), SLIPPED, ids=[s[0] for s in SLIPPED])
def test_a_file_added_to_a_saved_checkpoint_is_refused(
    saved: Path, tmp_path: Path, name: str, text: str, tally: Tally
):
    checkpoint = Path(shutil.copytree(saved, tmp_path / "ckpt"))
    load_model(checkpoint)  # clean: loads
    (checkpoint / name).parent.mkdir(exist_ok=True)
    (checkpoint / name).write_text(text, encoding="utf-8")
    tally("hostile checkpoints:", "files slipped in", 1)
    with pytest.raises(CheckpointError, match=f"{name}: not listed in manifest.json") as refused:
        load_model(checkpoint)
    assert "\n" not in str(refused.value) and "re-save the checkpoint" in str(refused.value)
    tally("hostile checkpoints:", "refused in one line", 1)


def test_a_changed_tokenizer_config_is_caught_and_a_clean_checkpoint_loads(
    saved: Path, tmp_path: Path
):
    checkpoint = Path(shutil.copytree(saved, tmp_path / "ckpt"))
    model, tokenizer = load_model(checkpoint)
    assert tokenizer.chat_template == CHATML
    config = checkpoint / "tokenizer_config.json"
    raw = json.loads(config.read_text(encoding="utf-8"))
    raw["chat_template"] = "{{ 'a' * 400000000 }}"
    config.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(CheckpointError, match="tokenizer_config.json: .*(bytes|sha256)"):
        load_model(checkpoint)
