"""Chat templates: byte-exact agreement with transformers' apply_chat_template, the built-in
formats against their documented text, and clear errors for broken templates."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import pytest

from metallic.chat_template import (
    BUILTIN_TEMPLATES,
    ChatTemplateError,
    choose_template,
    render_chat,
)
from metallic.gguf_file import read_gguf

if str(Path(__file__).parent) not in sys.path:  # conftest.py adds it; running alone does not
    sys.path.insert(0, str(Path(__file__).parent))
from real_models import smollm2_gguf  # noqa: E402

QWEN2_VOCAB = Path("/work/shared/tokenizer/ggml-vocab-qwen2.gguf")

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
