"""Chat templates: turning a list of messages into the prompt text a chat model was trained on.

Templates are Jinja programs shipped inside the model (GGUF key ``tokenizer.chat_template``,
copied from Hugging Face's ``tokenizer_config.json``). They are untrusted code, so they run in
Jinja's immutable sandbox. They are written against Hugging Face's ``apply_chat_template``, so
the environment reproduces its conventions, which templates depend on for byte-exact output:

- ``trim_blocks`` and ``lstrip_blocks`` on (whitespace around ``{% %}`` tags disappears);
- ``raise_exception(msg)`` and ``strftime_now(fmt)`` as globals, the ``loopcontrols``
  extension (``{% break %}``, ``{% continue %}``), and ``{% generation %}`` blocks accepted;
- ``tojson`` that leaves non-ASCII and HTML characters alone (Jinja's own escapes ``<`` and
  ``&``, which would change the prompt the model sees);
- ``tools`` and ``documents`` defined as None unless given, since templates test for them.

The sandbox stops a template from reaching Python's internals, not from running forever or
exhausting memory, so every rendering also runs on a budget (``RenderBudget``): output
characters, steps (each loop iteration, call, attribute or item lookup, operator and filter),
bytes of the values it builds (``'x' * n``, ``~``, ``+``, ``**``, ``format``, ``join``... are
checked before they allocate), the length of one ``range()``, and a wall-clock backstop
(template_sandbox.py: the environment's hooks that spend it). Compiling is bounded too: the
source's size and token count are capped, and pathological nesting becomes a
ChatTemplateError rather than Python's RecursionError or IndentationError.
Real templates use a small fraction of the budget (a tool-calling template with four tools and
400 messages: about 12,000 of the 250,000 steps and 0.2 MB of the 64 MB; the tests hold them to
a tenth of it); a hostile one stops within about a second and 100 MB.

Models without a template (Gemma 3 270M ships none) get a built-in one, chosen explicitly by
architecture: a wrong template produces fluent nonsense, so nothing is guessed from names.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import sys
import traceback
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser

from .errors import MetallicError
from .template_sandbox import (
    COMPILE_BUDGET,
    RUN,
    Exhausted,
    RenderBudget,
    Run,
    SandboxEnvironment,
    current_run,
    text_bytes,
    text_size,
)

__all__ = [
    "BUILTIN_TEMPLATES",
    "ChatTemplateError",
    "RenderBudget",
    "choose_template",
    "render_chat",
]


class ChatTemplateError(MetallicError, ValueError):
    """A chat template is missing, malformed, rejected the conversation, or exceeded its
    budget. The message says which, and where the template came from when that is known."""


# Each is the format its authors document, written for the environment below (trim_blocks and
# lstrip_blocks on; every tag strips the whitespace before it with "-" so that the templates
# can be laid out on several lines without emitting the line breaks).
BUILTIN_TEMPLATES: dict[str, str] = {
    # ChatML (OpenAI; Qwen, SmolLM and many fine-tunes). Qwen's own templates add a default
    # system prompt; this generic one adds nothing the caller did not send.
    "chatml": """\
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
""",
    # Gemma (Google, "Gemma formatting and system instructions"): turns of user and model, no
    # system role, so the system prompt opens the first user turn followed by a blank line.
    # Turn contents are stripped as Google's Gemma 3 template does.
    "gemma": """\
{{- bos_token }}
{%- if messages and messages[0]['role'] == 'system' %}
{%- set system_prefix = messages[0]['content'] + '\\n\\n' %}
{%- set turns = messages[1:] %}
{%- else %}
{%- set system_prefix = '' %}
{%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
{%- if (message['role'] == 'user') != (loop.index0 is even) %}
{{- raise_exception('Gemma conversations must alternate user and assistant turns, '
                    + 'starting with user (after an optional system message)') }}
{%- endif %}
{{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n' }}
{{- (system_prefix if loop.first else '') + (message['content'] | trim) + '<end_of_turn>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<start_of_turn>model\\n' }}
{%- endif %}
""",
    # Llama 3 (Meta's model card for Llama 3 Instruct): header-delimited turns, contents
    # stripped, and the generation prompt is an open assistant header.
    "llama3": """\
{{- bos_token }}
{%- for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
{{- (message['content'] | trim) + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
""",
    # Llama 2 chat (Meta's reference chat_completion): each exchange is
    # <s>[INST] user [/INST] answer </s>, the system prompt wrapped in <<SYS>> inside the first
    # instruction. A prompt ending in [/INST] already asks for the answer, so
    # add_generation_prompt changes nothing.
    "llama2": """\
{%- if messages and messages[0]['role'] == 'system' %}
{%- set system = messages[0]['content'] %}
{%- set turns = messages[1:] %}
{%- else %}
{%- set system = none %}
{%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
{%- if (message['role'] == 'user') != (loop.index0 is even) %}
{{- raise_exception('Llama 2 conversations must alternate user and assistant turns, '
                    + 'starting with user (after an optional system message)') }}
{%- endif %}
{%- if message['role'] == 'user' %}
{%- if loop.first and system is not none %}
{%- set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}
{%- else %}
{%- set content = message['content'] %}
{%- endif %}
{{- bos_token + '[INST] ' + (content | trim) + ' [/INST]' }}
{%- else %}
{{- ' ' + (message['content'] | trim) + ' ' + eos_token }}
{%- endif %}
{%- endfor %}
""",
    # Zephyr (Hugging Face H4, zephyr-7b-beta; also TinyLlama-Chat): <|role|> lines, each turn
    # closed by the end-of-sequence token and a newline.
    "zephyr": """\
{%- for message in messages %}
{{- '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|assistant|>\\n' }}
{%- endif %}
""",
}

# Architectures whose models may lack a template but whose chat format is unambiguous.
# Llama-architecture models are absent on purpose: Llama 2, Llama 3 and SmolLM (ChatML) share it.
ARCHITECTURE_TEMPLATES: dict[str, str] = {"gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma"}

METADATA_KEY = "tokenizer.chat_template"
_TEMPLATE_FILENAME = "<template>"  # what Jinja calls template code compiled from a string

# Compiling costs about 50 us per token of template source, and Python's compiler cannot be
# interrupted, so the source is capped before compiling. Real templates (Qwen3 with tools:
# 4 KB, about 1,000 tokens) are well inside both caps; at the caps compiling takes about 1 s.
MAX_TEMPLATE_CHARS = 128 << 10
MAX_TEMPLATE_TOKENS = 16_384
_MAX_JSON_BYTES = 16 << 20


def render_chat(
    template: str,
    messages: list[dict[str, str]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    origin: str | None = None,
    budget: RenderBudget | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` (dicts with "role" and "content") with the Jinja ``template``.

    ``bos_token``/``eos_token`` are the text of the model's special tokens (templates that
    emit them expect the tokenizer not to add BOS again). ``extra`` reaches the template as
    variables (``tools``, ``enable_thinking``, ``date_string``...). ``origin`` (where the
    template came from, as ``choose_template`` returns it) is appended to error messages.
    Raises ChatTemplateError for a broken template, when the template rejects the
    conversation, or when it exceeds ``budget`` (default ``RenderBudget()``).
    """
    suffix = f" [template from {origin}]" if origin else ""
    try:
        _check_messages(messages)
        compiled = _compile(template)
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{e}{suffix}") from e
    budget = budget or RenderBudget()
    context: dict[str, Any] = {"tools": None, "documents": None, **extra}
    context.update(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )
    run = Run(budget)
    token = RUN.set(run)
    pieces: list[str] = []
    failure: ChatTemplateError | None = None
    stream = compiled.generate(context)
    try:
        size = 0
        # Streaming the output stops a template as soon as it has written too much, rather
        # than after it has built all of it.
        for piece in stream:
            size += len(piece)
            if size > budget.max_output:
                note = f" ({budget.output_note})" if budget.output_note else ""
                raise Exhausted(f"wrote more than {budget.max_output:,} characters{note}")
            run.step()
            pieces.append(piece)
    except ChatTemplateError as e:
        if not suffix:
            raise  # raise_exception(): the template's own message is the explanation
        raise ChatTemplateError(f"{e}{suffix}") from e
    except Exhausted as e:
        where = _where(e) or _suspended_at(stream, compiled)
        failure = ChatTemplateError(f"chat template exceeded its budget{where}: {e}{suffix}")
    except RecursionError as e:
        failure = ChatTemplateError(
            f"chat template recursed too deeply{_where(e)} (more than Python's recursion limit "
            f"of {sys.getrecursionlimit()} frames){suffix}"
        )
    except MemoryError:
        failure = ChatTemplateError(f"chat template ran out of memory{suffix}")
    except Exception as e:
        # Jinja's errors (undefined values, sandbox violations) and Python's (adding a string to
        # None, indexing past the end...) alike are the template misusing a value.
        raise ChatTemplateError(
            f"chat template failed{_where(e)}: {type(e).__name__}: {e}{suffix}"
        ) from e
    finally:
        stream.close()
        RUN.reset(token)
    if failure is not None:
        # Raised here, outside the handler, so that the exception keeps no reference to the
        # frames (and the values they built) of the rendering that was stopped.
        pieces.clear()
        raise failure
    return "".join(pieces)


def choose_template(
    metadata: Mapping[str, Any],
    override: str | None = None,
    *,
    model_path: str | os.PathLike[str] | None = None,
) -> tuple[str, str]:
    """The chat template to use and where it came from, for messages and logs.

    ``override`` (the ``--chat-template`` option) wins: a built-in name, a file (a Jinja file,
    or a Hugging Face ``tokenizer_config.json`` holding ``chat_template``), or Jinja text
    itself. Otherwise the model's ``tokenizer.chat_template``; otherwise the built-in template
    of the model's architecture if it has one. ``model_path``, the GGUF file ``metadata`` was
    read from, is named in the origin. The template is compiled here, so a broken one fails
    before any generation starts.
    """
    path = os.fspath(model_path) if model_path is not None else None
    if override is not None:
        source, origin = _resolve_override(override)
    elif isinstance(metadata.get(METADATA_KEY), str) and metadata[METADATA_KEY].strip():
        source = metadata[METADATA_KEY]
        origin = f"{METADATA_KEY} in {path}" if path else f"model metadata ({METADATA_KEY})"
    else:
        arch = metadata.get("general.architecture")
        name = ARCHITECTURE_TEMPLATES.get(arch) if isinstance(arch, str) else None
        if name is None:
            raise ChatTemplateError(
                f"the model{f' {path}' if path else ''} has no chat template ({METADATA_KEY} "
                f"is missing from its metadata and architecture {arch!r} has no built-in "
                "default). Pass one with --chat-template: a built-in name "
                f"({', '.join(sorted(BUILTIN_TEMPLATES))}), a .jinja file, a "
                "tokenizer_config.json, or the template text"
            )
        source = BUILTIN_TEMPLATES[name]
        origin = (
            f"built-in template '{name}' (the model{f' {path}' if path else ''} has none; "
            f"chosen for architecture {arch})"
        )
    try:
        _compile(source)
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{e} [template from {origin}]") from e
    return source, origin


def _resolve_override(override: str) -> tuple[str, str]:
    if override in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[override], f"built-in template '{override}' (--chat-template)"
    if "{%" in override or "{{" in override:
        return override, "--chat-template text"
    path = Path(override).expanduser()
    if path.is_file():
        try:
            if path.suffix == ".json":
                # A tokenizer_config.json may be large (every added token is listed), but not
                # this large; a bigger file is refused rather than read whole.
                if path.stat().st_size > _MAX_JSON_BYTES:
                    raise ChatTemplateError(
                        f"{path} is {path.stat().st_size:,} bytes, more than the "
                        f"{_MAX_JSON_BYTES:,} a tokenizer_config.json may have"
                    )
                text = path.read_text(encoding="utf-8")
            else:
                # Reading one character past the cap is enough for compiling to refuse it.
                with open(path, encoding="utf-8") as f:
                    text = f.read(MAX_TEMPLATE_CHARS + 1)
        except (OSError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"cannot read chat template file {path}: {e}") from e
        if path.suffix == ".json":
            return _template_from_json(text, path), f"file {path} (chat_template)"
        return text, f"file {path}"
    raise ChatTemplateError(
        f"--chat-template {override!r} is not a built-in template "
        f"({', '.join(sorted(BUILTIN_TEMPLATES))}), an existing file, or Jinja text"
    )


def _template_from_json(text: str, path: Path) -> str:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ChatTemplateError(f"{path}: not valid JSON ({e})") from e
    template = config.get("chat_template") if isinstance(config, dict) else None
    # Hugging Face also stores several named templates as [{"name": ..., "template": ...}];
    # "default" is the one apply_chat_template uses.
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str):
        raise ChatTemplateError(f"{path}: no 'chat_template' string (or 'default' entry) in it")
    return template


def _check_messages(messages: object) -> None:
    # Templates index messages freely; a clear error here beats an obscure one from Jinja.
    if not isinstance(messages, (list, tuple)):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be a dict, got {type(message).__name__}")
        if not isinstance(message.get("role"), str):
            raise ChatTemplateError(f"messages[{i}] has no 'role' string: {message!r}")


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"chat template rejected the conversation: {message}")


def _strftime_now(format: str) -> str:
    # A format expands at most about 30 times (%c is 24 characters, %% one).
    current_run().reserve(32 * text_bytes(format), "strftime_now()")
    return datetime.now().strftime(format)


_MAX_JSON_INDENT = 16


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | str | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    width = len(indent) if isinstance(indent, str) else indent
    if not isinstance(width, int):
        width = 0  # None, or a type json.dumps rejects itself
    if width > _MAX_JSON_INDENT:
        raise Exhausted(f"tojson(indent={indent!r}) indents by more than {_MAX_JSON_INDENT}")
    sep = sum(map(len, separators)) if separators else 0
    current_run().reserve(text_size(value, quoted=True, indent=width + sep), "tojson")
    text = json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    current_run().charge(text)
    return text


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: Hugging Face marks assistant text with it
    (to build training masks); for inference it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _environment() -> SandboxEnvironment:
    env = SandboxEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.guard_filters()
    return env


_ENV = _environment()


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    # Compiling a template costs milliseconds (more than rendering it); a chat session renders
    # the same one every turn.
    if not isinstance(source, str):
        raise ChatTemplateError(f"a chat template must be a string, got {type(source).__name__}")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(
            f"chat template is over {MAX_TEMPLATE_CHARS:,} characters (real ones are a few "
            "thousand); refusing to compile it"
        )
    token = RUN.set(Run(COMPILE_BUDGET))
    try:
        tokens = sum(1 for _ in itertools.islice(_ENV.lex(source), MAX_TEMPLATE_TOKENS + 1))
        if tokens > MAX_TEMPLATE_TOKENS:
            raise ChatTemplateError(
                f"chat template has over {MAX_TEMPLATE_TOKENS:,} Jinja tokens (real ones have "
                "a few thousand); refusing to compile it"
            )
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"chat template syntax error at line {e.lineno}: {e.message}"
        ) from e
    except (RecursionError, SyntaxError, MemoryError) as e:
        # Nesting (of parentheses, ifs, loops) past what Jinja's recursive parser or Python's
        # compiler of the generated code accepts: IndentationError ("too many levels of
        # indentation"), SyntaxError ("too many statically nested blocks"), RecursionError.
        raise ChatTemplateError(
            f"chat template is nested too deeply to compile ({type(e).__name__}: {e})"
        ) from None
    finally:
        RUN.reset(token)


def _suspended_at(stream: Iterator[str], compiled: jinja2.Template) -> str:
    """Where a template stopped for its output (the budget ran out between two pieces): the
    line of the template's code the rendering generator is suspended at."""
    inner: Any = stream
    while getattr(inner, "gi_yieldfrom", None) is not None:
        inner = inner.gi_yieldfrom
    frame = getattr(inner, "gi_frame", None)
    if frame is None or frame.f_code.co_filename != _TEMPLATE_FILENAME:
        return ""
    return f" at line {compiled.get_corresponding_lineno(frame.f_lineno)}"


def _where(error: BaseException) -> str:
    # Jinja rewrites tracebacks so that template code appears as frames of the template file
    # at the template's line numbers; the innermost such frame is where it went wrong.
    lines = [
        f.lineno
        for f in traceback.extract_tb(error.__traceback__)
        if f.filename == _TEMPLATE_FILENAME
    ]
    return f" at line {lines[-1]}" if lines else ""
