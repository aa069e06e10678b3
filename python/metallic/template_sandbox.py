"""The sandbox and the budget chat templates run in (chat_template.py renders with them).

Jinja's immutable sandbox stops a template from reaching Python's internals, not from running
forever or exhausting memory. So every rendering runs on a RenderBudget, spent through hooks of
the environment: steps (each loop iteration, call, attribute or item lookup, operator, filter
and output piece), bytes of the values the template builds (checked before they allocate), the
length of one range(), and a wall-clock backstop. Compiling runs constant folding through the
same hooks, on a budget of its own.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any

import jinja2
import jinja2.compiler
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.runtime
import jinja2.sandbox
import jinja2.utils


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


# --- the budget ----------------------------------------------------------------------------
#
# One Run per rendering (and one per compilation, whose constant folding runs filters and
# operators) holds what has been spent. The environment's hooks find it through a context
# variable, so renderings in different threads each spend their own.


class Exhausted(Exception):
    """A budget ran out. Not a ValueError, TypeError or LookupError on purpose: Jinja's
    filters and lookups catch those to fall back on defaults, which would swallow it."""


class Run:
    __slots__ = ("budget", "deadline", "memory", "steps")

    def __init__(self, budget: RenderBudget) -> None:
        self.budget = budget
        self.steps = 0
        self.memory = 0
        self.deadline = time.monotonic() + budget.max_seconds

    def step(self, cost: int = 1) -> None:
        self.steps += cost
        if self.steps > self.budget.max_steps:
            raise Exhausted(
                f"took more than {self.budget.max_steps:,} steps (loop iterations, calls, "
                "lookups, operators, filters)"
            )
        if time.monotonic() > self.deadline:
            raise Exhausted(f"ran for more than {self.budget.max_seconds:g} s")

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
            raise Exhausted(
                f"{what} would build up to {nbytes:,} bytes, more than the {max(left, 0):,} "
                f"left of its {self.budget.max_memory:,}-byte memory budget"
            )

    def charge(self, value: object) -> None:
        """Counts a value the template built (it may keep it: memory only grows)."""
        self.memory += _sizeof(value)
        if self.memory > self.budget.max_memory:
            raise Exhausted(f"built more than {self.budget.max_memory:,} bytes of values")


RUN: contextvars.ContextVar[Run | None] = contextvars.ContextVar("chat_template_run", default=None)
# Compiling folds constant expressions by running them: they get a budget of their own (a
# refused fold is simply evaluated, and checked, when rendering instead).
COMPILE_BUDGET = RenderBudget(max_steps=100_000, max_memory=16 << 20, max_seconds=60.0)


def current_run() -> Run:
    run = RUN.get()
    # Outside render_chat and _compile (someone using the environment directly) each
    # operation still gets the default limits, on its own.
    return run if run is not None else Run(RenderBudget())


# Calls that run template code (a macro, a recursive loop's next level) cost as much as ten
# simple steps.
_EXPENSIVE_CALLS = (jinja2.runtime.Macro, jinja2.runtime.LoopContext)
_MACRO_COST = 10
_MAX_ITEMS = 100_000  # elements of one list a template builds (range, *, +, list, batch...)
_MAX_INT_BITS = 1 << 16  # integers past this are only good for burning CPU
_MAX_WALK = 200_000  # elements looked at to bound the text of one value


def text_bytes(s: str | bytes) -> int:
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


def text_size(value: object, *, quoted: bool = False, indent: int = 0) -> int:
    """An upper bound on the bytes of ``str(value)`` (``quoted``: of its repr or JSON, where
    a character becomes at most a 10-character escape; ``indent``: extra characters per
    element and level of nesting), computed without building it."""
    total = 0
    seen = 0
    stack: list[tuple[object, bool, int]] = [(value, quoted, 0)]
    while stack:
        v, q, depth = stack.pop()
        if isinstance(v, str):
            total += 10 * text_bytes(v) + 2 if q else text_bytes(v)
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
                raise Exhausted(f"turning more than {_MAX_WALK:,} values into text")
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
        raise Exhausted(f"{what} of {value:,} is more than {_MAX_ITEMS * 100:,}")
    return max(value, 0)


def _check_items(n: int, what: str) -> None:
    if n > _MAX_ITEMS:
        raise Exhausted(f"{what} would have {n:,} items, more than {_MAX_ITEMS:,}")


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
            raise Exhausted(f"a format width or precision of {len(digits)} digits")
        numbers += int(digits)
    values = list(values)
    quoted = bool(_REPR_CONVERSION.search(fmt))
    largest = max((text_size(v, quoted=quoted) for v in values), default=0)
    dynamic = "*" in fmt if percent else bool(_NESTED_FIELD.search(fmt))
    if dynamic:  # widths taken from the values
        largest += max(
            (v for v in values if isinstance(v, int) and not isinstance(v, bool)), default=0
        )
    fields = fmt.count("%" if percent else "{")
    return text_bytes(fmt) + 4 * numbers + fields * (largest + 64)


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


def _binop_check(run: Run, op: str, left: Any, right: Any) -> None:
    if op == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)):
            count = max(int(n), 0) * len(seq)
            if isinstance(seq, (list, tuple)):
                _check_items(count, f"{type(seq).__name__} * {n}")
                run.reserve(8 * count, f"{type(seq).__name__} * {n}")
            else:
                run.reserve(count * (text_bytes(seq) // max(len(seq), 1)), f"string * {n}")
        elif isinstance(left, int) and isinstance(right, int):
            bits = left.bit_length() + right.bit_length()
            if bits > _MAX_INT_BITS:
                raise Exhausted(f"a product of {bits:,} bits, more than {_MAX_INT_BITS:,}")
    elif op == "+":
        if isinstance(left, (str, bytes)) and isinstance(right, (str, bytes)):
            run.reserve(text_bytes(left) + text_bytes(right), "string + string")
        elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            _check_items(len(left) + len(right), "list + list")
            run.reserve(8 * (len(left) + len(right)), "list + list")
    elif op == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            bits = right * left.bit_length()
            if bits > _MAX_INT_BITS:
                raise Exhausted(
                    f"{left} ** {right} would have about {bits:,} bits, more than {_MAX_INT_BITS:,}"
                )
    elif op == "%" and isinstance(left, str):
        values = _format_values((right,), {})
        run.reserve(_format_bound(left, values, percent=True), "string % values")


def _method_bound(s: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """An upper bound on the bytes a str or bytes method builds; 0 for those that build no more
    than the string itself."""
    size = text_bytes(s)
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
            return size + count * text_bytes(new)
    if name == "join" and args and isinstance(arg, list):
        return sum(text_bytes(x) for x in arg if isinstance(x, (str, bytes))) + len(arg) * size
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
        return lambda value, *args, **kwargs: factor * text_size(value) + 64

    def lines(value: object) -> int:
        return value.count("\n") + 1 if isinstance(value, str) else text_size(value) + 1

    def indent(s: object, width: object = 4, first: bool = False, blank: bool = False) -> int:
        w = len(width) * 4 if isinstance(width, str) else _as_size(width, "indent width")
        return text_size(s) + lines(s) * w

    def center(value: object, width: object = 80) -> int:
        return text_size(value) + _as_size(width, "center width")

    def wordwrap(s: object, width: int = 79, break_long: bool = True, wrapstring: Any = None,
                 break_on_hyphens: bool = True) -> int:  # fmt: skip
        return text_size(s) * (1 + text_size(wrapstring or "\n"))

    def replace(s: object, old: object, new: object, count: int | None = None) -> int:
        if not (isinstance(s, str) and isinstance(old, str)):
            # Turned into text by the filter: bounded without building that text here.
            return text_size(s) + (text_size(s) + 1) * text_size(new)
        n = s.count(old) if old else len(s) + 1
        if count is not None and count >= 0:
            n = min(n, count)
        return text_bytes(s) + n * text_size(new)

    def truncate(s: object, length: int = 255, killwords: bool = False, end: object = "...",
                 leeway: object = None) -> int:  # fmt: skip
        return text_size(s) + text_size(end)

    def fmt(value: object, *args: Any, **kwargs: Any) -> int:
        if not isinstance(value, str):
            if text_size(value) > 1 << 20:
                raise Exhausted("format with more than 1 MB of format string")
            value = str(value)
        return _format_bound(value, _format_values(args, kwargs), percent=True)

    def join(value: Any, d: object = "", attribute: object = None) -> int:
        items = value if isinstance(value, (list, tuple)) else []
        return sum(text_size(x) for x in items) + len(items) * text_size(d)

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
        return len(value) * (text_size(value) + text_size(start))

    def pprint(value: object) -> int:
        return text_size(value, quoted=True, indent=4)

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
        run = current_run()
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
    current_run().reserve(
        16 * _as_size(n, "lipsum paragraphs") * _as_size(max, "lipsum words"), "lipsum"
    )
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _Counted:
    """A for loop's iterable: each item costs a step. Its length is the iterable's, so that
    ``loop.length`` and ``loop.last`` work without reading ahead."""

    __slots__ = ("_iterable", "_run")

    def __init__(self, iterable: Iterable[Any], run: Run) -> None:
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


class SandboxEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The immutable sandbox, with every hook it offers spending the current Run."""

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
        run = current_run()
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
        run = current_run()
        run.step()
        _binop_check(run, operator, left, right)
        result = self.binop_table[operator](left, right)
        run.spent(result)
        run.charge(result)
        return result

    def getattr(self, obj: Any, attribute: str) -> Any:
        current_run().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        current_run().step()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        by_name = value.__name__ == "format_map"

        def checked(*args: Any, **kwargs: Any) -> str:
            run = current_run()
            values = _format_values(args, kwargs) if by_name else [*args, *kwargs.values()]
            run.reserve(_format_bound(fmt, values, percent=False), f"str.{value.__name__}()")
            result = wrapped(*args, **kwargs)
            run.spent(result)
            run.charge(result)
            return result

        return checked

    def budget_iter(self, iterable: Iterable[Any]) -> _Counted:
        return _Counted(iterable, current_run())

    def budget_range(self, *args: int) -> range:
        r = range(*args)
        try:
            n = len(r)
        except OverflowError:  # longer than sys.maxsize
            n = sys.maxsize
        limit = current_run().budget.max_range
        if n > limit:
            raise Exhausted(f"range() of {n:,} items, more than {limit:,}")
        return r

    def budget_slice(self, obj: Any, start: Any, stop: Any, step: Any) -> Any:
        run = current_run()
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
            run.reserve(n * (text_bytes(obj) // max(len(obj), 1)), "a slice")
        result = obj[where]
        run.spent(result)
        run.charge(result)
        return result

    def budget_concat(self, parts: tuple[Any, ...]) -> str:
        run = current_run()
        run.step()
        run.reserve(sum(text_size(p) for p in parts), "~")
        result = "".join(map(str, parts))
        run.spent(result)
        run.charge(result)
        return result


def _finalize(value: Any) -> Any:
    # Every {{ }} passes here before str() turns it into text: a list holding the same long
    # string many times is short, but its text is not.
    run = current_run()
    run.step()
    if isinstance(value, str):
        return value
    run.reserve(text_size(value), "{{ }}")
    text = str(value)
    run.spent(text)
    run.charge(text)
    return text


def _join_output(pieces: Iterable[str]) -> str:
    run = current_run()
    pieces = pieces if isinstance(pieces, list) else list(pieces)
    run.step(1 + len(pieces))
    run.reserve(sum(map(text_bytes, pieces)), "a macro's or block's output")
    result = "".join(pieces)
    run.spent(result)
    run.charge(result)
    return result
