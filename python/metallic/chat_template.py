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
checked before they allocate), the length of one ``range()``, and a wall-clock backstop.
Compiling is bounded too: the source's size and token count are capped, and pathological
nesting becomes a ChatTemplateError rather than Python's RecursionError or IndentationError.
Real templates use a small fraction of the budget (a tool-calling template with four tools and
400 messages: about 12,000 of the 250,000 steps and 0.2 MB of the 64 MB; the tests hold them to
a tenth of it); a hostile one stops within about a second and 100 MB.

Models without a template (Gemma 3 270M ships none) get a built-in one, chosen explicitly by
architecture: a wrong template produces fluent nonsense, so nothing is guessed from names.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils

from .errors import MetallicError

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


@dataclass(frozen=True)
class RenderBudget:
    """What one rendering of a chat template may spend; the first limit crossed stops it with
    a ChatTemplateError naming the limit. The defaults are over ten times what real templates
    need even for long chats with tools, and small enough that a hostile template cannot hurt
    the process."""

    max_output: int = 8 << 20  # characters of rendered text
    # Loop iterations, calls, attribute/item lookups, operators, filters and output pieces;
    # building long strings and lists costs a step per 256 characters or per item, and a
    # macro call 10 (it takes as long as ten simple steps). A step takes about a microsecond.
    max_steps: int = 250_000
    # Bytes of the strings, lists and numbers the template builds; each operation is checked
    # before it allocates, so this bounds the memory a rendering can take.
    max_memory: int = 64 << 20
    max_range: int = 10_000  # items of one range()
    # Wall clock, checked at every step: a backstop for slow operations the counts miss.
    max_seconds: float = 1.0
    # Why max_output is what it is, for the message (e.g. the context it has to fit).
    output_note: str = ""


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
    run = _Run(budget)
    token = _RUN.set(run)
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
                raise _Exhausted(f"wrote more than {budget.max_output:,} characters{note}")
            run.step()
            pieces.append(piece)
    except ChatTemplateError as e:
        if not suffix:
            raise  # raise_exception(): the template's own message is the explanation
        raise ChatTemplateError(f"{e}{suffix}") from e
    except _Exhausted as e:
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
        _RUN.reset(token)
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
    _run().reserve(32 * _text_bytes(format), "strftime_now()")
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
        raise _Exhausted(f"tojson(indent={indent!r}) indents by more than {_MAX_JSON_INDENT}")
    sep = sum(map(len, separators)) if separators else 0
    _run().reserve(_text_size(value, quoted=True, indent=width + sep), "tojson")
    text = json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    _run().charge(text)
    return text


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: Hugging Face marks assistant text with it
    (to build training masks); for inference it renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


# --- the budget ----------------------------------------------------------------------------
#
# One _Run per rendering (and one per compilation, whose constant folding runs filters and
# operators) holds what has been spent. The environment's hooks find it through a context
# variable, so renderings in different threads each spend their own.


class _Exhausted(Exception):
    """A budget ran out. Not a ValueError, TypeError or LookupError on purpose: Jinja's
    filters and lookups catch those to fall back on defaults, which would swallow it."""


class _Run:
    __slots__ = ("budget", "deadline", "memory", "steps")

    def __init__(self, budget: RenderBudget) -> None:
        self.budget = budget
        self.steps = 0
        self.memory = 0
        self.deadline = time.monotonic() + budget.max_seconds

    def step(self, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > self.budget.max_steps:
            raise _Exhausted(
                f"took more than {self.budget.max_steps:,} steps (loop iterations, calls, "
                "lookups, operators, filters)"
            )
        if time.monotonic() > self.deadline:
            raise _Exhausted(f"ran for more than {self.budget.max_seconds:g} s")

    def spent(self, result: object) -> None:
        """Costs the steps of having built ``result`` (its length), after the fact: one
        operation is already bounded by what it may allocate, this bounds their sum."""
        work = _work(result)
        if work:
            self.step(work)

    def reserve(self, nbytes: int, what: str) -> None:
        """Refuses an operation that would build ``nbytes`` (an upper bound) before it does."""
        left = self.budget.max_memory - self.memory
        if nbytes > left:
            raise _Exhausted(
                f"{what} would build up to {nbytes:,} bytes, more than the {max(left, 0):,} "
                f"left of its {self.budget.max_memory:,}-byte memory budget"
            )

    def charge(self, value: object) -> None:
        """Counts a value the template built (it may keep it: memory only grows)."""
        self.memory += _sizeof(value)
        if self.memory > self.budget.max_memory:
            raise _Exhausted(f"built more than {self.budget.max_memory:,} bytes of values")


_RUN: contextvars.ContextVar[_Run | None] = contextvars.ContextVar(
    "chat_template_run", default=None
)
# Compiling folds constant expressions by running them: they get a budget of their own (a
# refused fold is simply evaluated, and checked, when rendering instead).
_COMPILE_BUDGET = RenderBudget(max_steps=100_000, max_memory=16 << 20, max_seconds=60.0)


def _run() -> _Run:
    run = _RUN.get()
    # Outside render_chat and _compile (someone using the environment directly) each
    # operation still gets the default limits, on its own.
    return run if run is not None else _Run(RenderBudget())


# Calls that run template code (a macro, a recursive loop's next level) cost as much as ten
# simple steps.
_EXPENSIVE_CALLS = (jinja2.runtime.Macro, jinja2.runtime.LoopContext)
_MACRO_COST = 10
_MAX_ITEMS = 100_000  # elements of one list a template builds (range, *, +, list, batch...)
_MAX_INT_BITS = 1 << 16  # integers past this are only good for burning CPU
_MAX_WALK = 200_000  # elements looked at to bound the text of one value


def _text_bytes(s: str | bytes) -> int:
    # Python stores a non-ASCII string in up to 4 bytes per character; assume the worst.
    return len(s) if isinstance(s, bytes) or s.isascii() else 4 * len(s)


def _sizeof(value: object) -> int:
    if isinstance(value, (str, bytes, int, float, list, tuple, dict)):
        return sys.getsizeof(value)
    return 0


def _work(value: object) -> int:
    """Steps building ``value`` cost beyond the first: copying or sorting takes time in
    proportion to the length."""
    if isinstance(value, (str, bytes)):
        return len(value) >> 8
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return len(value)
    return 0


def _text_size(value: object, *, quoted: bool = False, indent: int = 0) -> int:
    """An upper bound on the bytes of ``str(value)`` (``quoted``: of its repr or JSON, where
    a character becomes at most a 10-character escape; ``indent``: extra characters per
    element and level of nesting), computed without building it."""
    total = 0
    seen = 0
    stack: list[tuple[object, bool, int]] = [(value, quoted, 0)]
    while stack:
        v, q, depth = stack.pop()
        if isinstance(v, str):
            total += 10 * _text_bytes(v) + 2 if q else _text_bytes(v)
        elif isinstance(v, (bytes, bytearray)):
            total += 4 * len(v) + 3
        elif v is None or isinstance(v, (bool, float)):
            total += 32
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 2  # decimal digits: bits * log10(2) < bits / 3
        elif isinstance(v, jinja2.Undefined):
            pass  # renders as nothing (or raises)
        elif isinstance(v, (Mapping, list, tuple, set, frozenset, jinja2.utils.Namespace)):
            if isinstance(v, jinja2.utils.Namespace):
                total += 16  # "<Namespace {...}>"
                v = object.__getattribute__(v, "_Namespace__attrs")
            items: Iterable[object]
            if isinstance(v, Mapping):
                items = itertools.chain.from_iterable(v.items())
                n = 2 * len(v)
            else:
                items, n = v, len(v)  # type: ignore[arg-type]
            seen += n
            if seen > _MAX_WALK:
                raise _Exhausted(f"turning more than {_MAX_WALK:,} values into text")
            total += 2 + n * (2 + indent * (depth + 1))
            stack.extend((item, True, depth + 1) for item in items)
        else:
            total += 256  # a macro, loop or cycler renders as a short description
    return total


def _as_size(value: object, what: str) -> int:
    """A width or count argument, as an int (Jinja passes what the template wrote)."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return 0  # the operation itself will reject it
    if value > _MAX_ITEMS * 100:
        raise _Exhausted(f"{what} of {value:,} is more than {_MAX_ITEMS * 100:,}")
    return max(value, 0)


def _check_items(n: int, what: str) -> None:
    if n > _MAX_ITEMS:
        raise _Exhausted(f"{what} would have {n:,} items, more than {_MAX_ITEMS:,}")


_DIGITS = re.compile(r"\d+")
# %r, %a, {!r}, {!a}: a value's repr, where a character may take up to 10
_REPR_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +*.\d]*[ra]|![ra]")
_NESTED_FIELD = re.compile(r":[^{}]*\{")


def _format_bound(fmt: str, values: Iterable[object], *, percent: bool) -> int:
    """An upper bound on the bytes of ``fmt % values`` (``percent``) or ``fmt.format(*values)``:
    each field prints at most its width and precision (numbers written in the format, or, with
    ``*`` or nested fields, integers among the values) plus the largest value's text."""
    numbers = 0
    for digits in _DIGITS.findall(fmt):
        if len(digits) > 9:
            raise _Exhausted(f"a format width or precision of {len(digits)} digits")
        numbers += int(digits)
    values = list(values)
    quoted = bool(_REPR_CONVERSION.search(fmt))
    largest = max((_text_size(v, quoted=quoted) for v in values), default=0)
    dynamic = "*" in fmt if percent else bool(_NESTED_FIELD.search(fmt))
    if dynamic:  # widths taken from the values
        largest += max(
            (v for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0
        )
    fields = fmt.count("%" if percent else "{")
    return _text_bytes(fmt) + 4 * numbers + fields * (largest + 64)


def _format_values(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[object]:
    values: list[object] = list(args) + list(kwargs.values())
    out: list[object] = []
    for v in values:  # "%s %s" % (a, b) and "%(x)s" % {...} format the elements
        if isinstance(v, tuple):
            out.extend(v)
        elif isinstance(v, Mapping):
            out.extend(v.values())
        else:
            out.append(v)
    return out


def _binop_check(run: _Run, op: str, left: Any, right: Any) -> None:
    if op == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)):
            count = max(int(n), 0) * len(seq)
            if isinstance(seq, (list, tuple)):
                _check_items(count, f"{type(seq).__name__} * {n}")
                run.reserve(8 * count, f"{type(seq).__name__} * {n}")
            else:
                run.reserve(count * (_text_bytes(seq) // max(len(seq), 1)), f"string * {n}")
        elif isinstance(left, int) and isinstance(right, int):
            bits = left.bit_length() + right.bit_length()
            if bits > _MAX_INT_BITS:
                raise _Exhausted(f"a product of {bits:,} bits, more than {_MAX_INT_BITS:,}")
    elif op == "+":
        if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
            run.reserve(_text_bytes(left) + _text_bytes(right), "string + string")
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            _check_items(len(left) + len(right), "list + list")
            run.reserve(8 * (len(left) + len(right)), "list + list")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            bits = right * left.bit_length()
            if bits > _MAX_INT_BITS:
                raise _Exhausted(
                    f"{left} ** {right} would have about {bits:,} bits, more than {_MAX_INT_BITS:,}"
                )
    elif op == "%" and isinstance(left, str):
        values = _format_values((right,), {})
        run.reserve(_format_bound(left, values, percent=True), "string % values")


def _method_bound(s: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper bound on the bytes a str or bytes method builds; 0 for those that build no more
    than the string itself."""
    size = _text_bytes(s)
    char = 4 if isinstance(s, str) else 1
    arg = args[0] if args else None
    if name in ("ljust", "rjust", "center", "zfill"):
        return size + char * _as_size(arg if args else kwargs.get("width", 0), f"{name}()")
    if name == "expandtabs":
        tab = _as_size(arg if args else kwargs.get("tabsize", 8), "expandtabs()")
        return size + char * s.count("\t" if isinstance(s, str) else b"\t") * tab
    if name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, type(s)) and isinstance(new, type(s)):
            count = s.count(old) if old else len(s) + 1  # type: ignore[arg-type]
            limit = args[2] if len(args) > 2 else kwargs.get("count", -1)
            if isinstance(limit, int) and limit >= 0:
                count = min(count, limit)
            return size + count * _text_bytes(new)
    if name == "join" and args and isinstance(arg, list):
        return sum(_text_bytes(x) for x in arg if isinstance(x, (str, bytes))) + len(arg) * size
    if name in _GROWING_METHODS:
        return 3 * size
    return 0


# Methods whose result may be longer than the string: case mappings turn one character into up
# to three ("ß".upper() is "SS"), hex() doubles.
_GROWING_METHODS = frozenset(
    {"upper", "lower", "title", "capitalize", "swapcase", "casefold", "encode", "hex"}
)


def _materialize(value: Any) -> Any:
    """A list of a one-shot iterable (a generator from map or select) that has to be measured
    before it is used; anything else as it is."""
    if isinstance(value, Sized) or not isinstance(value, Iterable):
        return value
    items = []
    for item in value:
        items.append(item)
        _check_items(len(items), "a sequence")
    return items


def _filter_bounds() -> dict[str, Callable[..., int]]:
    """Upper bounds on the bytes each filter that builds text or lists may build, from its
    arguments (without Jinja's context argument). Other filters return an existing value or a
    number, or build no more than what they are given."""

    def text(factor: int) -> Callable[..., int]:
        return lambda value, *args, **kwargs: factor * _text_size(value) + 64

    def lines(value: object) -> int:
        return value.count("\n") + 1 if isinstance(value, str) else _text_size(value) + 1

    def indent(s: object, width: object = 4, first: bool = False, blank: bool = False) -> int:
        w = len(width) * 4 if isinstance(width, str) else _as_size(width, "indent width")
        return _text_size(s) + lines(s) * w

    def center(value: object, width: object = 80) -> int:
        return _text_size(value) + _as_size(width, "center width")

    def wordwrap(s: object, width: int = 79, break_long: bool = True, wrapstring: Any = None,
                 break_on_hyphens: bool = True) -> int:  # fmt: skip
        return _text_size(s) * (1 + _text_size(wrapstring or "\n"))

    def replace(s: object, old: object, new: object, count: int | None = None) -> int:
        if not (isinstance(s, str) and isinstance(old, str)):
            # Turned into text by the filter: bounded without building that text here.
            return _text_size(s) + (_text_size(s) + 1) * _text_size(new)
        n = s.count(old) if old else len(s) + 1
        if count is not None and count >= 0:
            n = min(n, count)
        return _text_bytes(s) + n * _text_size(new)

    def truncate(s: object, length: int = 255, killwords: bool = False, end: object = "...",
                 leeway: object = None) -> int:  # fmt: skip
        return _text_size(s) + _text_size(end)

    def fmt(value: object, *args: Any, **kwargs: Any) -> int:
        if not isinstance(value, str):
            if _text_size(value) > 1 << 20:
                raise _Exhausted("format with more than 1 MB of format string")
            value = str(value)
        return _format_bound(value, _format_values(args, kwargs), percent=True)

    def join(value: Any, d: object = "", attribute: object = None) -> int:
        items = value if isinstance(value, (list, tuple)) else []
        return sum(_text_size(x) for x in items) + len(items) * _text_size(d)

    def items(value: Any, *args: Any, **kwargs: Any) -> int:
        n = len(value) if isinstance(value, Sized) else 0
        _check_items(n, "a list")
        return 8 * n + 64

    def batch(value: Any, linecount: object, fill_with: object = None) -> int:
        n = _as_size(linecount, "batch size")
        _check_items(n, "a batch")
        return items(value) + 8 * n

    def slice_(value: Any, slices: object, fill_with: object = None) -> int:
        n = _as_size(slices, "slice count")
        _check_items(n, "a slicing")
        return items(value) + 72 * n

    def sum_(value: Any, attribute: object = None, start: object = 0) -> int:
        if isinstance(start, (int, float)) or not isinstance(value, (list, tuple)):
            return 0
        # Adding lists or strings copies the running total at every element.
        return len(value) * (_text_size(value) + _text_size(start))

    def pprint(value: object) -> int:
        return _text_size(value, quoted=True, indent=4)

    return {
        "center": center,
        "indent": indent,
        "wordwrap": wordwrap,
        "replace": replace,
        "truncate": truncate,
        "format": fmt,
        "join": join,
        "list": items,
        "batch": batch,
        "slice": slice_,
        "sum": sum_,
        "pprint": pprint,
        "string": text(1),
        "safe": text(1),
        "trim": text(1),
        "striptags": text(1),
        "wordcount": text(1),
        "reverse": text(1),
        "lower": text(3),  # case mappings can lengthen a character up to three
        "upper": text(3),
        "title": text(3),
        "capitalize": text(3),
        "e": text(5),  # & becomes &amp;
        "escape": text(5),
        "forceescape": text(5),
        "xmlattr": text(6),
        "urlencode": text(12),  # a character is up to 4 bytes of %XX
        "urlize": text(16),  # each word may become a link: <a href="...">...</a>
    }


# Filters whose first argument may be a one-shot iterable that has to be measured first.
_MATERIALIZED_FILTERS = frozenset({"join", "list", "batch", "slice", "sum"})


def _guard_filter(name: str, func: Callable[..., Any], bound: Callable[..., int] | None) -> Any:
    # Filters taking Jinja's context (pass_context and friends) get it as first argument.
    skip = 1 if hasattr(func, "jinja_pass_arg") else 0
    materialize = name in _MATERIALIZED_FILTERS

    @functools.wraps(func)  # keeps jinja_pass_arg, so Jinja still passes the context
    def guarded(*args: Any, **kwargs: Any) -> Any:
        run = _run()
        if materialize and len(args) > skip:
            args = (*args[:skip], _materialize(args[skip]), *args[skip + 1 :])
        run.step()
        if bound is not None:
            run.reserve(bound(*args[skip:], **kwargs), f"the {name} filter")
        result = func(*args, **kwargs)
        run.spent(result)
        if bound is not None:
            run.charge(result)
        return result

    return guarded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    _run().reserve(16 * _as_size(n, "lipsum paragraphs") * _as_size(max, "lipsum words"), "lipsum")
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _Counted:
    """A for loop's iterable: each item costs a step. Its length is the iterable's, so that
    ``loop.length`` and ``loop.last`` work without reading ahead."""

    __slots__ = ("_iterable", "_run")

    def __init__(self, iterable: Iterable[Any], run: _Run) -> None:
        self._iterable = iterable
        self._run = run

    def __len__(self) -> int:
        # Without a length (a generator) this raises TypeError, and Jinja counts the items.
        return len(self._iterable)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        step = self._run.step
        for item in self._iterable:
            step()
            yield item


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """Jinja's compiler, with every for loop iterating through ``environment.budget_iter``,
    every ``~`` calling ``environment.budget_concat`` and every slice ``environment.budget_slice``:
    the sandbox has no hook for these, and nested loops or doubling strings with ``~`` are the
    cheapest attacks."""

    def visit_For(self, node: jinja2.nodes.For, frame: jinja2.compiler.Frame) -> None:
        wrap = jinja2.nodes.EnvironmentAttribute("budget_iter", lineno=node.iter.lineno)
        node.iter = jinja2.nodes.Call(wrap, [node.iter], [], None, None, lineno=node.iter.lineno)
        super().visit_For(node, frame)

    def visit_Getitem(self, node: jinja2.nodes.Getitem, frame: jinja2.compiler.Frame) -> None:
        if not isinstance(node.arg, jinja2.nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        # Jinja compiles slices to Python slicing, past the sandbox's getitem: copying a long
        # string over and over would cost nothing.
        self.write("environment.budget_slice(")
        self.visit(node.node, frame)
        for part in (node.arg.start, node.arg.stop, node.arg.step):
            self.write(", ")
            if part is None:
                self.write("None")
            else:
                self.visit(part, frame)
        self.write(")")

    def visit_Concat(self, node: jinja2.nodes.Concat, frame: jinja2.compiler.Frame) -> None:
        self.write("environment.budget_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


# Methods that only build big results from small inputs (str.maketrans tables for translate,
# int.to_bytes of a huge length) and that no chat template needs.
_UNSAFE_METHODS = frozenset({"maketrans", "translate", "to_bytes"})


class _Environment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every hook it offers spending the current _Run."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=_finalize, **options)
        self.globals["range"] = self.budget_range
        self.globals["lipsum"] = _lipsum
        # Joins the output of macros, {% set %} blocks and call blocks: it is bounded like ~.
        self.concat = _join_output  # type: ignore[method-assign]

    def guard_filters(self) -> None:
        bounds = _filter_bounds()
        for name, func in list(self.filters.items()):
            self.filters[name] = _guard_filter(name, func, bounds.get(name))

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr not in _UNSAFE_METHODS and super().is_safe_attribute(obj, attr, value)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        run = _run()
        owner = getattr(obj, "__self__", None)
        run.step(_MACRO_COST if isinstance(obj, _EXPENSIVE_CALLS) else 1)
        if isinstance(owner, (str, bytes)):
            name = getattr(obj, "__name__", "")
            if name == "join" and args:
                args = (_materialize(args[0]), *args[1:])
            bound = _method_bound(owner, name, args, kwargs)
            if bound:
                run.reserve(bound, f"{type(owner).__name__}.{name}()")
            result = super().call(context, obj, *args, **kwargs)
            run.spent(result)
            run.charge(result)
            return result
        return super().call(context, obj, *args, **kwargs)

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        run = _run()
        run.step()
        _binop_check(run, operator, left, right)
        result = self.binop_table[operator](left, right)
        run.spent(result)
        run.charge(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        _run().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _run().step()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        by_name = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            run = _run()
            values = _format_values(args, kwargs) if by_name else [*args, *kwargs.values()]
            run.reserve(_format_bound(fmt, values, percent=False), f"str.{value.__name__}()")
            result = wrapped(*args, **kwargs)
            run.spent(result)
            run.charge(result)
            return result

        return checked

    def budget_iter(self, iterable: Iterable[Any]) -> _Counted:
        return _Counted(iterable, _run())

    def budget_range(self, *args: int) -> range:
        r = range(*args)
        try:
            n = len(r)
        except OverflowError:  # longer than sys.maxsize
            n = sys.maxsize
        limit = _run().budget.max_range
        if n > limit:
            raise _Exhausted(f"range() of {n:,} items, more than {limit:,}")
        return r

    def budget_slice(self, obj: Any, start: Any, stop: Any, step: Any) -> Any:
        run = _run()
        where = slice(start, stop, step)
        if not isinstance(obj, (str, bytes, list, tuple)):
            run.step()
            return obj[where]
        try:
            n = len(range(*where.indices(len(obj))))
        except (TypeError, ValueError):
            return obj[where]  # a bad index: Python's own error says which
        run.step()
        if isinstance(obj, (list, tuple)):
            run.reserve(8 * n, "a slice")
        else:
            run.reserve(n * (_text_bytes(obj) // max(len(obj), 1)), "a slice")
        result = obj[where]
        run.spent(result)
        run.charge(result)
        return result

    def budget_concat(self, parts: tuple[Any, ...]) -> str:
        run = _run()
        run.step()
        run.reserve(sum(_text_size(p) for p in parts), "~")
        result = "".join(map(str, parts))
        run.spent(result)
        run.charge(result)
        return result


def _finalize(value: Any) -> Any:
    # Every {{ }} passes here before str() turns it into text: a list holding the same long
    # string many times is short, but its text is not.
    run = _run()
    run.step()
    if isinstance(value, str):
        return value
    run.reserve(_text_size(value), "{{ }}")
    text = str(value)
    run.spent(text)
    run.charge(text)
    return text


def _join_output(pieces: Iterable[str]) -> str:
    run = _run()
    pieces = pieces if isinstance(pieces, list) else list(pieces)
    run.step(1 + len(pieces))
    run.reserve(sum(map(_text_bytes, pieces)), "a macro's or block's output")
    result = "".join(pieces)
    run.spent(result)
    run.charge(result)
    return result


def _environment() -> _Environment:
    env = _Environment(
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
    token = _RUN.set(_Run(_COMPILE_BUDGET))
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
        _RUN.reset(token)


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
