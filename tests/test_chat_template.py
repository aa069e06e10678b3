"""Chat templates: byte-exact agreement with transformers' apply_chat_template, the built-in
formats against their documented text, clear errors for broken templates, and budgets that stop
hostile ones (a GGUF file is untrusted input) without getting in the way of real ones."""

from __future__ import annotations

import datetime
import json
import re
import time
import tracemalloc
import types
from pathlib import Path
from typing import Any

import jinja2.sandbox
import numpy as np
import pytest

from metallic.chat_template import (
    BUILTIN_TEMPLATES,
    MAX_TEMPLATE_CHARS,
    METADATA_KEY,
    ChatTemplateError,
    RenderBudget,
    choose_template,
    render_chat,
)
from metallic.errors import ContextError, MetallicError
from metallic.gguf_file import read_gguf
from metallic.tokenizer import Tokenizer
from metallic.tokenizer.bpe import BYTE_TO_CHAR
from paths import shared_dir
from real_models import smollm2_gguf

QWEN2_VOCAB = shared_dir() / "tokenizer" / "ggml-vocab-qwen2.gguf"

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "Hello!"}],
    "system": [SYSTEM, {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": 'Another one, in <b>bold</b> & "quotes".'},
    ],
    "no_system_multi": [
        {"role": "user", "content": "  padded  \n"},
        {"role": "assistant", "content": "Noted.\n"},
        {"role": "user", "content": "Ünïcödé — 日本語 ✓"},
    ],
    "empty": [],
}


@pytest.fixture(scope="module")
def hf_tokenizer():
    # A tokenizer with no vocabulary: apply_chat_template(tokenize=False) only needs the
    # template and the special tokens' text, and this needs no network.
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tokenizers.models.BPE()),
        bos_token="<|bos|>",
        eos_token="<|eos|>",
    )


def hf_render(tok, template: str, messages, add_generation_prompt: bool, **extra) -> str:
    out = tok.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        **extra,
    )
    assert isinstance(out, str)
    return out


def ours(template: str, messages, add_generation_prompt: bool, **extra) -> str:
    return render_chat(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        **extra,
    )


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    return read_gguf(smollm2_gguf()).metadata["tokenizer.chat_template"]


@pytest.fixture(scope="module")
def qwen2_template() -> str:
    if not QWEN2_VOCAB.exists():
        pytest.skip(f"shared vocabulary not found at {QWEN2_VOCAB} (set METALLIC_SHARED)")
    return read_gguf(QWEN2_VOCAB).metadata["tokenizer.chat_template"]


# --- agreement with transformers --------------------------------------------------------------


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("conv", [c for c in CONVERSATIONS if c != "empty"])
def test_smollm2_template_matches_transformers(smollm2_template, hf_tokenizer, conv, gen):
    messages = CONVERSATIONS[conv]
    want = hf_render(hf_tokenizer, smollm2_template, messages, gen)
    assert ours(smollm2_template, messages, gen) == want


def test_smollm2_template_text(smollm2_template) -> None:
    # Pin the actual text too, so a change on both sides cannot go unnoticed.
    assert ours(smollm2_template, CONVERSATIONS["single"], True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("conv", ["single", "multi_turn"])
def test_qwen2_template_matches_transformers_and_text(qwen2_template, hf_tokenizer, conv, gen):
    messages = CONVERSATIONS[conv]
    got = ours(qwen2_template, messages, gen)
    assert got == hf_render(hf_tokenizer, qwen2_template, messages, gen)
    if conv == "single":
        assert got == (
            "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
            "<|im_start|>user\nHello!<|im_end|>\n" + ("<|im_start|>assistant\n" if gen else "")
        )


@pytest.mark.parametrize("gen", [True, False], ids=["gen", "nogen"])
@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtins_render_the_same_under_transformers(hf_tokenizer, name, gen):
    # Our templates rely on HF's whitespace rules (trim_blocks, lstrip_blocks); rendering them
    # with transformers shows our environment applies the same ones.
    for messages in (CONVERSATIONS["system"], CONVERSATIONS["multi_turn"]):
        template = BUILTIN_TEMPLATES[name]
        assert ours(template, messages, gen) == hf_render(hf_tokenizer, template, messages, gen)


HF_FEATURES = """\
{% for message in messages %}
  {% if loop.index0 == 2 %}{% break %}{% endif %}
  {% generation %}{{ message['content'] | tojson }}{% endgeneration %}
  {{- ',' if not loop.last }}
{% endfor %}
{{ {'b': [1, 2], 'a': 'é<&>'} | tojson(indent=2, sort_keys=True) }}
{% if tools is none %}no tools{% endif %}
{{ custom_flag }}
"""


def test_hf_features_match_transformers(hf_tokenizer) -> None:
    messages = CONVERSATIONS["multi_turn"]
    got = ours(HF_FEATURES, messages, True, custom_flag="on")
    assert got == hf_render(hf_tokenizer, HF_FEATURES, messages, True, custom_flag="on")
    # tojson keeps non-ASCII and HTML characters as they are, unlike Jinja's own filter.
    assert '"é<&>"' in got and '"You are a terse assistant."' in got
    assert "Blue." not in got  # the loop stopped at the third message
    assert "no tools" in got and got.rstrip().endswith("on")


def test_strftime_now() -> None:
    before = datetime.datetime.now().strftime("%Y-%m-%d")
    got = render_chat("{{ strftime_now('%Y-%m-%d') }}", [])
    assert got in {before, datetime.datetime.now().strftime("%Y-%m-%d")}


# --- built-in formats, as their authors document them ----------------------------------------


def test_gemma_builtin_is_googles_format() -> None:
    t = BUILTIN_TEMPLATES["gemma"]
    assert render_chat(t, CONVERSATIONS["multi_turn"], bos_token="<bos>") == (
        "<bos><start_of_turn>user\n"
        "You are a terse assistant.\n\n"
        "Name a color.<end_of_turn>\n"
        "<start_of_turn>model\n"
        "Blue.<end_of_turn>\n"
        "<start_of_turn>user\n"
        'Another one, in <b>bold</b> & "quotes".<end_of_turn>\n'
        "<start_of_turn>model\n"
    )
    assert render_chat(
        t, CONVERSATIONS["no_system_multi"], bos_token="<bos>", add_generation_prompt=False
    ) == (
        "<bos><start_of_turn>user\npadded<end_of_turn>\n"
        "<start_of_turn>model\nNoted.<end_of_turn>\n"
        "<start_of_turn>user\nÜnïcödé — 日本語 ✓<end_of_turn>\n"
    )


def test_gemma_builtin_rejects_non_alternating_roles() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="alternate user and assistant"):
        render_chat(BUILTIN_TEMPLATES["gemma"], messages)


EXPECTED_SYSTEM_CONVERSATION = {
    "chatml": "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<bos><start_of_turn>user\nYou are a terse assistant.\n\nWhat is 2+2?<end_of_turn>\n"
    "<start_of_turn>model\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "You are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "What is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "llama2": "<s>[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\nWhat is 2+2? [/INST]",
    "zephyr": "<|system|>\nYou are a terse assistant.</s>\n<|user|>\nWhat is 2+2?</s>\n"
    "<|assistant|>\n",
}
BOS = {"gemma": "<bos>", "llama3": "<|begin_of_text|>", "llama2": "<s>"}


@pytest.mark.parametrize("name", sorted(EXPECTED_SYSTEM_CONVERSATION))
def test_builtin_expected_text(name: str) -> None:
    got = render_chat(
        BUILTIN_TEMPLATES[name],
        CONVERSATIONS["system"],
        bos_token=BOS.get(name, ""),
        eos_token="</s>",
    )
    assert got == EXPECTED_SYSTEM_CONVERSATION[name]


def test_builtin_multi_turn_and_generation_prompt_off() -> None:
    messages = CONVERSATIONS["multi_turn"]
    assert render_chat(
        BUILTIN_TEMPLATES["llama2"], messages, bos_token="<s>", eos_token="</s>"
    ) == (
        "<s>[INST] <<SYS>>\nYou are a terse assistant.\n<</SYS>>\n\nName a color. [/INST]"
        ' Blue. </s><s>[INST] Another one, in <b>bold</b> & "quotes". [/INST]'
    )
    assert render_chat(
        BUILTIN_TEMPLATES["llama3"],
        messages[:3],
        add_generation_prompt=False,
        bos_token="<|begin_of_text|>",
    ) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You are a terse assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
        "Name a color.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nBlue.<|eot_id|>"
    )
    assert render_chat(BUILTIN_TEMPLATES["llama3"], CONVERSATIONS["no_system_multi"][:2]) == (
        "<|start_header_id|>user<|end_header_id|>\n\npadded<|eot_id|>"  # contents stripped
        "<|start_header_id|>assistant<|end_header_id|>\n\nNoted.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(BUILTIN_TEMPLATES["chatml"], messages[1:3], add_generation_prompt=False) == (
        "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\nBlue.<|im_end|>\n"
    )


# --- errors -----------------------------------------------------------------------------------


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(ChatTemplateError, match="syntax error at line 3"):
        render_chat("ok\n{% for m in messages %}\n{{ m['content'] }\n{% endfor %}", [])
    with pytest.raises(ChatTemplateError, match="line 1.*endfor"):
        render_chat("{% for m in messages %}{{ m }}", [])


def test_undefined_misuse_names_the_line() -> None:
    template = "{% for m in messages %}\n{{ m['content'] }}\n{{ m.extra.field }}\n{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"at line 3: UndefinedError: .*'extra'"):
        render_chat(template, CONVERSATIONS["single"])


def test_other_runtime_errors_become_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="line 2.*TypeError"):
        render_chat("x\n{{ messages[0]['content'] + 1 }}", CONVERSATIONS["single"])


def test_raise_exception() -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first!') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError) as info:
        render_chat(template, [SYSTEM])
    # The template's own words, not buried in a wrapper: they are meant for the user.
    assert str(info.value) == "chat template rejected the conversation: user first!"
    assert render_chat(template, CONVERSATIONS["single"]) == ""


def test_sandbox_blocks_mutation_and_internals() -> None:
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        render_chat("{{ messages.append(1) }}", [])
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        render_chat("{{ messages.__class__.__mro__ }}", [])


def test_bad_messages() -> None:
    with pytest.raises(ChatTemplateError, match="messages must be a list"):
        render_chat("{{ messages }}", "hello")  # type: ignore[arg-type]
    with pytest.raises(ChatTemplateError, match=r"messages\[1\] has no 'role'"):
        render_chat("{{ messages }}", [{"role": "user", "content": "a"}, {"content": "b"}])


def test_compiled_templates_are_cached() -> None:
    from metallic import chat_template

    source = "{{ messages | length }} cached"
    assert chat_template._compile(source) is chat_template._compile(source)


# --- choosing a template ----------------------------------------------------------------------

SMOL_META = {"general.architecture": "llama", "tokenizer.chat_template": "{{ 'from metadata' }}"}


def test_choose_metadata_template() -> None:
    source, origin = choose_template(SMOL_META)
    assert source == "{{ 'from metadata' }}" and "tokenizer.chat_template" in origin


def test_choose_gemma3_builtin_when_metadata_has_none() -> None:
    source, origin = choose_template({"general.architecture": "gemma3"})
    assert source == BUILTIN_TEMPLATES["gemma"]
    assert "gemma" in origin and "gemma3" in origin


def test_choose_without_template_tells_how_to_pass_one() -> None:
    with pytest.raises(ChatTemplateError, match="no chat template.*--chat-template"):
        choose_template({"general.architecture": "llama"})
    with pytest.raises(ChatTemplateError, match="--chat-template"):
        choose_template({"general.architecture": "llama", "tokenizer.chat_template": "  "})


def test_override_wins(tmp_path: Path) -> None:
    assert choose_template(SMOL_META, "llama3")[0] == BUILTIN_TEMPLATES["llama3"]
    assert (
        choose_template({"general.architecture": "gemma3"}, "chatml")[0]
        == BUILTIN_TEMPLATES["chatml"]
    )
    source, origin = choose_template(SMOL_META, "{{ 'inline' }}")
    assert source == "{{ 'inline' }}" and "text" in origin

    jinja_file = tmp_path / "t.jinja"
    jinja_file.write_text("{{ 'from file' }}", encoding="utf-8")
    source, origin = choose_template(SMOL_META, str(jinja_file))
    assert source == "{{ 'from file' }}" and str(jinja_file) in origin

    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{{ 'from json' }}"}), encoding="utf-8")
    assert choose_template({}, str(config))[0] == "{{ 'from json' }}"
    config.write_text(
        json.dumps(
            {
                "chat_template": [
                    {"name": "tool_use", "template": "{{ 't' }}"},
                    {"name": "default", "template": "{{ 'd' }}"},
                ]
            }
        ),
        encoding="utf-8",
    )
    assert choose_template({}, str(config))[0] == "{{ 'd' }}"


def test_bad_override() -> None:
    with pytest.raises(ChatTemplateError, match="not a built-in template.*chatml.*gemma"):
        choose_template(SMOL_META, "no-such-template")
    with pytest.raises(ChatTemplateError, match=r"syntax error at line 1.*\[template from"):
        choose_template(SMOL_META, "{% if %}")


def test_broken_metadata_template_fails_at_choice() -> None:
    with pytest.raises(ChatTemplateError, match="syntax error.*model metadata"):
        choose_template({"tokenizer.chat_template": "{{ messages"})


# --- hostile templates: every failure is a ChatTemplateError, within budget -------------------
#
# A GGUF file is untrusted input, and its chat template is a program: these are the ways one
# could hang the process or exhaust its memory, each stopped early and reported as a
# ChatTemplateError that names the budget and where the template came from.

ONE = [{"role": "user", "content": "hi"}]
# Deterministic limits for tests that check which limit stops a template: no wall clock.
NO_CLOCK = RenderBudget(max_seconds=3600.0)


def budget_error(template: str, budget: RenderBudget = NO_CLOCK, **extra: Any) -> str:
    with pytest.raises(ChatTemplateError) as info:
        render_chat(template, ONE, origin="file /models/evil.jinja", budget=budget, **extra)
    message = str(info.value)
    assert message.endswith("[template from file /models/evil.jinja]"), message
    return message


def test_template_errors_are_metallic_value_errors() -> None:
    assert issubclass(ChatTemplateError, MetallicError)
    assert issubclass(ChatTemplateError, ValueError)


NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"


def test_nested_loops_stop() -> None:
    # range() is capped (the sandbox's own cap is 100,000)...
    assert "range() of 100,000 items, more than 10,000" in budget_error(NESTED_LOOPS)
    # ...and loops within the cap run out of steps: every iteration costs one.
    small = NESTED_LOOPS.replace("100000", "10000")
    message = budget_error(small, RenderBudget(max_steps=20_000, max_seconds=3600.0))
    assert "exceeded its budget at line 1: took more than 20,000 steps" in message
    # With the default budget, the same stops within about a second whatever stops it.
    start = time.perf_counter()
    message = budget_error(small, RenderBudget())
    assert re.search(r"more than 250,000 steps|ran for more than 1 s", message), message
    assert time.perf_counter() - start < 3.0


def test_the_wall_clock_is_a_backstop() -> None:
    # Steps are the deterministic limit; the clock catches whatever they would miss.
    budget = RenderBudget(max_steps=10**12, max_seconds=0.05)
    start = time.perf_counter()
    message = budget_error(NESTED_LOOPS.replace("100000", "10000"), budget)
    assert "ran for more than 0.05 s" in message
    assert time.perf_counter() - start < 1.0


def test_loops_over_long_strings_and_recursive_macros_cost_steps() -> None:
    budget = RenderBudget(max_steps=5_000, max_seconds=3600.0)
    message = budget_error("{% for c in 'x' * 100000 %}{% endfor %}", budget)
    assert "more than 5,000 steps" in message
    macro = (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(30) }}"
    )
    assert "more than 5,000 steps" in budget_error(macro, budget)


def test_string_multiplication_is_refused_before_it_allocates() -> None:
    tracemalloc.start()
    try:
        start = time.perf_counter()
        message = budget_error("{{ 'x' * 10**8 }}")
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "string * 100000000 would build up to 100,000,000 bytes" in message
    assert "67,108,864-byte memory budget" in message
    assert peak < 4 << 20, f"{peak:,} bytes allocated while refusing"
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ 2 ** 1000000 }}", "2 ** 1000000 would have about 2,000,000 bits"),
        ("{{ [0] * 1000000 }}", "list * 1000000 would have 1,000,000 items"),
        ("{{ 'x'|center(1000000000) }}", "center width of 1,000,000,000"),
        ("{{ 'x'.ljust(1000000000) }}", "ljust() of 1,000,000,000"),
        ("{{ '%0999999999d' % 1 }}", "a format width or precision of 10 digits"),
        ("{{ '%*d' % (10**9, 1) }}", "string % values would build up to 1,000,000,079"),
        ("{{ '{:>{}}'.format('x', 10**9) }}", "str.format() would build up to"),
        ("{{ '%s'|format('x' * 40000000) }}", "the format filter would build up to 40,000,066"),
        ("{{ ('x' * 1000)|replace('', 'y' * 100000) }}", "the replace filter would build"),
        ("{% set l = ['x' * 1000000] * 100 %}{{ l|join }}", "the join filter would build"),
        ("{% set l = ['x' * 1000000] * 100 %}{{ l }}", "{{ }} would build"),
        ("{% set l = ['x' * 1000000] * 100 %}{{ l ~ '' }}", "~ would build"),
        ("{{ (['x' * 1000000] * 100)|tojson }}", "tojson would build"),
        ("{{ [1]|tojson(indent=100000000) }}", "indents by more than 16"),
        ("{{ ('a ' * 1000)|wordwrap(1, wrapstring='x' * 100000) }}", "the wordwrap filter"),
        ("{{ [1]|batch(100000000, 'x')|list }}", "batch size of 100,000,000"),
        ("{{ lipsum(100000) }}", "lipsum would build"),
        ("{{ 'x'.maketrans('x', 'y') }}", "SecurityError"),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            "~ would build up to 33,554,432 bytes",
        ),
        (
            "{% set ns = namespace(s='x') %}{% for i in range(64) %}"
            "{% set ns.s = ns.s + ns.s %}{% endfor %}",
            "string + string would build up to 33,554,432 bytes",
        ),
        (
            "{% set ns = namespace(n=3) %}{% for i in range(20) %}"
            "{% set ns.n = ns.n * ns.n %}{% endfor %}",
            "a product of 103,874 bits, more than 65,536",
        ),
        (
            "{% set big = 'x' * 1000000 %}{% macro m() %}{% for i in range(1000) %}{{ big }}"
            "{% endfor %}{% endmacro %}{{ m()|length }}",
            "a macro's or block's output would build up to 1,000,000,000 bytes",
        ),
        (
            "{% set s = 'x' * 40000000 %}{% for i in range(100) %}{% set t = s[1:] %}{% endfor %}",
            "a slice would build up to 39,999,999 bytes",
        ),
    ],
)
def test_allocations_are_bounded(template: str, expected: str) -> None:
    start = time.perf_counter()
    message = budget_error(template)
    assert expected in message
    assert time.perf_counter() - start < 1.0


def test_output_is_capped_while_it_streams() -> None:
    budget = RenderBudget(max_output=100_000, max_seconds=3600.0, output_note="a test cap")
    message = budget_error("{% for i in range(10000) %}{{ 'x' * 1000 }}{% endfor %}", budget)
    assert "wrote more than 100,000 characters (a test cap)" in message
    # A template's own output is all it can write: message content counts too.
    content = [{"role": "user", "content": "y" * 200_000}]
    with pytest.raises(ChatTemplateError, match="wrote more than 100,000 characters"):
        render_chat("{{ messages[0].content }}", content, budget=budget)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ " + "(" * 100 + "1" + ")" * 100 + " }}", "RecursionError"),
        ("{{ " + "-" * 3000 + "1 }}", "RecursionError"),
        ("{% if true %}" * 120 + "x" + "{% endif %}" * 120, "IndentationError"),
        ("{% for m in messages %}" * 60 + "x" + "{% endfor %}" * 60, "SyntaxError"),
    ],
    ids=["parentheses", "unary-minus", "ifs", "loops"],
)
def test_deep_nesting_is_a_template_error(template: str, error: str) -> None:
    with pytest.raises(ChatTemplateError, match=f"nested too deeply to compile \\({error}"):
        render_chat(template, ONE)
    with pytest.raises(ChatTemplateError) as info:
        choose_template({METADATA_KEY: template}, model_path="/models/deep.gguf")
    assert str(info.value).endswith(f"[template from {METADATA_KEY} in /models/deep.gguf]")


def test_runtime_recursion_is_a_template_error() -> None:
    template = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"
    with pytest.raises(ChatTemplateError, match="recursed too deeply at line 1"):
        render_chat(template, ONE)


def test_oversized_templates_are_refused_before_compiling() -> None:
    start = time.perf_counter()
    with pytest.raises(ChatTemplateError, match="over 131,072 characters"):
        render_chat("x" * (MAX_TEMPLATE_CHARS + 1), ONE)
    with pytest.raises(ChatTemplateError, match="over 16,384 Jinja tokens"):
        render_chat("{{ x }}" * 10_000, ONE)
    assert time.perf_counter() - start < 1.0


def test_errors_name_the_model_file(tmp_path: Path) -> None:
    meta = {METADATA_KEY: "{% for i in range(20000) %}{% endfor %}"}
    source, origin = choose_template(meta, model_path="/models/evil.gguf")
    assert origin == f"{METADATA_KEY} in /models/evil.gguf"
    with pytest.raises(ChatTemplateError) as info:
        render_chat(source, ONE, origin=origin)
    assert str(info.value) == (
        "chat template exceeded its budget at line 1: range() of 20,000 items, more than "
        f"10,000 [template from {METADATA_KEY} in /models/evil.gguf]"
    )
    jinja_file = tmp_path / "evil.jinja"
    jinja_file.write_text("{{ raise_exception('no') }}", encoding="utf-8")
    source, origin = choose_template(meta, str(jinja_file))
    with pytest.raises(ChatTemplateError, match=f"conversation: no .*{re.escape(str(jinja_file))}"):
        render_chat(source, ONE, origin=origin)


# A template shaped like the tool-calling ones instruct models ship (tools as JSON, tool calls,
# reasoning, a reversed scan of the conversation), written for these tests.
TOOLS_TEMPLATE = (Path(__file__).parent / "data" / "tools_chat_template.jinja").read_text("utf-8")

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": f"get_weather_{i}",
            "description": "The current weather in a city, in the unit asked for. " * 3,
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "the city"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    }
    for i in range(4)
]


def long_chat(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        call = {"type": "function", "function": {"name": "get_weather_1", "arguments": {}}}
        call["function"]["arguments"] = {"city": f"Paris {i}", "unit": "celsius"}
        messages += [
            {"role": "user", "content": f"Question {i}: is it warm in Paris? " * 5},
            {"role": "assistant", "content": "<think>\nCheck.\n</think>\n\n", "tool_calls": [call]},
            {"role": "tool", "content": json.dumps({"temperature": 20 + i % 10})},
            {"role": "assistant", "content": f"It is {20 + i % 10} degrees. Ünïcödé ✓"},
        ]
    return messages[:-1] + [{"role": "user", "content": "Thanks!"}]


def plain_jinja(template: str, messages: list[dict[str, Any]], **extra: Any) -> str:
    """The same template rendered by Jinja's own sandbox, without any budget."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    context = {"tools": None, "add_generation_prompt": True, "bos_token": "<s>", "eos_token": ""}
    return env.from_string(template).render({**context, **extra, "messages": messages})


# A tenth of the default budget: real templates must fit ten times over.
TENTH = RenderBudget(max_steps=25_000, max_memory=6 << 20, max_seconds=3600.0)


def test_real_templates_fit_a_tenth_of_the_budget() -> None:
    messages = long_chat(100)  # 400 messages, 4 tools
    start = time.perf_counter()
    got = render_chat(TOOLS_TEMPLATE, messages, tools=TOOLS, bos_token="<s>", budget=TENTH)
    elapsed = time.perf_counter() - start
    assert got == plain_jinja(TOOLS_TEMPLATE, messages, tools=TOOLS)
    assert "get_weather_3" in got and got.endswith("<|start|>assistant\n")
    assert elapsed < 2.0  # about 30 ms on an idle machine
    chat = [
        {"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 20} for i in range(399)
    ]
    for name in ("gemma", "llama3", "chatml"):
        render_chat(BUILTIN_TEMPLATES[name], chat, budget=TENTH)


# Jinja features whose compiled code the budget changes (for loops, ~, slices, output): the
# text must stay exactly what Jinja renders.
FEATURES = """\
{%- for m in messages if m.role != 'tool' recursive %}[{{ loop.index }}/{{ loop.length }}
{{- '' if loop.last else ',' }}{{ loop.cycle('a', 'b') }}]{% else %}none{% endfor %}
{% for i in range(3) %}{% if i == 1 %}{% continue %}{% endif %}{{ i }}{% endfor %}
{{ messages[::-1][0].role ~ '|' ~ messages[1:2]|length ~ 7 ~ none ~ [1, 'a'] }}
{{ 'abc'[::-1] }}{{ 'abcdef'[1:-1:2] }}{{ [1, 2, 3][-2:] }}{{ (1, 2)[:1] }}
{{ '%05.1f|%s|%d' % (3.14159, 'x', 7) }} {{ '{}-{:>4}'.format('a', 'b') }} {{ 2 ** 10 }}
{{ messages|map(attribute='role')|join(', ') }} {{ [3, 1, 2]|sort|list }} {{ 7 // 2 }}
{{ 'a\\nb'|indent(2, first=true) }} {{ 'x'|center(5) }}|{{ 'aXbX'|replace('X', '-') }}
{% set ns = namespace(s='') %}{% for x in 'abc' %}{% set ns.s = ns.s + x * 2 %}{% endfor %}
{{- ns.s }} {{ ([1] * 3 + [2])|batch(3, 0)|list }} {{ {'k': [1, 'é']}|tojson }}
{% macro wrap(x) %}<{{ caller() }}{{ x }}>{% endmacro %}{% call wrap(1) %}in{% endcall %}
{% set block %}B{{ messages|length }}{% endset %}{{ block }} {{ none }} {{ undefined_name }}
"""


def test_budget_keeps_jinja_semantics() -> None:
    messages = CONVERSATIONS["multi_turn"]
    assert render_chat(FEATURES, messages, bos_token="<s>") == plain_jinja(FEATURES, messages)


# --- the prompt must fit the context before it is tokenized -----------------------------------


def tiny_tokenizer() -> Tokenizer:
    """Byte-level BPE: the 256 bytes, "hello" built by merges, two control tokens; its longest
    piece is <|im_start|> (12 bytes)."""
    tokens = [*BYTE_TO_CHAR, "he", "ll", "hell", "hello", "<|im_start|>", "<|im_end|>"]
    return Tokenizer.from_metadata(
        {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": np.array([1] * 260 + [3, 3], dtype=np.int32),
            "tokenizer.ggml.merges": ["h e", "l l", "he ll", "hell o"],
            "tokenizer.ggml.eos_token_id": 261,
        }
    )


def fake_model(n_ctx: int, template: str = BUILTIN_TEMPLATES["chatml"]) -> Any:
    """What generate() and chat_prompt_ids() need before they reach the engine."""
    return types.SimpleNamespace(
        tokenizer=tiny_tokenizer(),
        n_ctx=n_ctx,
        metadata={"general.architecture": "qwen2", METADATA_KEY: template},
        path=Path("/models/tiny.gguf"),
    )


def test_longest_piece() -> None:
    assert tiny_tokenizer().max_piece_bytes == len("<|im_start|>")
    # SentencePiece: a piece's U+2581 stands for one space (one byte of text, not three).
    spm = shared_dir() / "tokenizer" / "ggml-vocab-llama-spm.gguf"
    if not spm.exists():
        pytest.skip(f"shared vocabulary not found at {spm}")
    assert Tokenizer.from_gguf(spm).max_piece_bytes == 27


def test_huge_prompt_is_refused_without_tokenizing() -> None:
    from metallic.generate import generate

    model = fake_model(n_ctx=64)  # holds at most 64 * 12 = 768 bytes of text
    huge = "hello " * ((100 << 20) // 6)  # 100 MB
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(ContextError, match="over 768 bytes of text, more than a context "):
            generate(model, huge, 1, None)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 1 << 20, f"{peak:,} bytes allocated while refusing"
    # Non-ASCII text is measured in UTF-8 bytes: 500 characters, 1,000 bytes.
    with pytest.raises(ContextError, match="over 768 bytes"):
        generate(model, "é" * 500, 1, None)
    # Text that may fit is tokenized and counted exactly, as before: 700 bytes, 700 tokens.
    run = generate(model, "é" * 350, 1, None)
    with pytest.raises(ContextError, match="the prompt has 700 tokens but the context holds 64"):
        next(run)


def test_chat_prompt_is_capped_by_the_context() -> None:
    from metallic.chat import chat_prompt_ids

    model = fake_model(n_ctx=64)
    ids = chat_prompt_ids(model, [{"role": "user", "content": "hello"}], None)
    assert ids[0] == 260 and 259 in ids  # <|im_start|> ... hello
    # The template's output is capped at what the context can hold: 768 characters.
    looping = fake_model(64, "{% for i in range(1000) %}{{ messages[0].content }}{% endfor %}")
    with pytest.raises(ChatTemplateError) as info:
        chat_prompt_ids(looping, [{"role": "user", "content": "hello"}], None)
    assert str(info.value) == (
        "chat template exceeded its budget at line 1: wrote more than 768 characters (more than "
        f"a context of 64 tokens can hold) [template from {METADATA_KEY} in /models/tiny.gguf]"
    )
    # A 100 MB message: refused, quickly and without copying it.
    huge = [{"role": "user", "content": "x" * (100 << 20)}]
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(ChatTemplateError, match="exceeded its budget"):
            chat_prompt_ids(model, huge, None)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 4 << 20, f"{peak:,} bytes allocated while refusing"
    # What fits in characters but not in bytes is refused by the byte check.
    wide = fake_model(64, "{{ messages[0].content }}")
    with pytest.raises(ContextError, match="over 768 bytes"):
        chat_prompt_ids(wide, [{"role": "user", "content": "é" * 700}], None)
