#!/usr/bin/env python3
"""Metal Shading Language rules for the kernels that neither the simulator nor the OpenCL check see.

The simulator (cpp/metal/sim) compiles the kernels as C++, where attributes are stripped and any
integer type converts to any other; the OpenCL check (.ci/check_metal_address_spaces.py) types
address spaces. Neither knows what Apple's compiler rejects in a kernel's signature, nor which
MSL version a feature needs. This script reads the sources (pure Python, no compiler) and checks,
from Apple's Metal Shading Language Specification (MSL) and Metal feature set tables:

  builtin-width       the position/size attributes of one kernel (thread_position_in_grid,
                      thread_position_in_threadgroup, threadgroup_position_in_grid,
                      threads_per_grid, threads_per_threadgroup, threadgroups_per_grid,
                      dispatch_threads_per_threadgroup) all have one width: all scalar, or all
                      vectors of the same number of components (MSL, "kernel function input
                      attributes", the notes after the table)
  builtin-type        each attribute's allowed types (MSL table "attributes for kernel function
                      input arguments"): the position/size ones ushort/uint or their 2- and
                      3-vectors, the index/count ones (thread_index_in_simdgroup,
                      simdgroup_index_in_threadgroup, threads_per_simdgroup, ...) scalar
                      ushort/uint
  builtin-type-match  thread_position_in_grid and threads_per_grid of one type;
                      thread_position_in_threadgroup, threads_per_threadgroup and
                      dispatch_threads_per_threadgroup of one type; thread_index_in_threadgroup
                      of thread_position_in_threadgroup's scalar type; the SIMD-group and
                      quad-group index/count attributes of one type (the same notes)
  builtin-conflict    thread_execution_width and threads_per_simdgroup (the same value) not both
  buffer-index        [[buffer(n)]] unique per kernel, 0 <= n < 31 (buffer argument table:
  threadgroup-index   31 entries); [[threadgroup(n)]] likewise; [[texture(n)]] (128) and
  texture-index       [[sampler(n)]] (16) likewise
  sampler-index
  kernel-return       a kernel returns void (MSL, "compute functions (kernels)")
  address-space       pointer and reference parameters of a kernel are device, constant or
                      threadgroup (MSL, "address spaces"; "locating buffer, texture, and
                      sampler arguments"); [[buffer]] ones device or
                      constant, [[threadgroup]] ones threadgroup
  host-name           kernel names (function names, [[host_name("...")]]) unique over the files
                      checked: metal/*.metal link into one metallib, and the simulator
                      registers every kernel in one table
  msl-version         a file (with the headers it includes) uses nothing newer than the
                      project's MSL target: the -std=metalX.Y of CMakeLists.txt (metal3.0)
  gpu-family          ... and nothing beyond TARGET_FAMILY (Apple7: M1, the first Apple-silicon
                      Mac; docs/metal.md asks for macOS 13+ on Apple silicon)

Features inside `#if __METAL_VERSION__ >= N` need nothing above N; host-only branches
(`#ifndef __METAL_VERSION__`, the #else of `#ifdef __METAL_VERSION__`) are skipped.

Output: one line per violation, `file:line: rule: message`; exit status 1 if there is any.
--summary also prints what each file needs (MSL version, GPU family, and where).

Usage: check_msl.py [--summary] [--target X.Y] [--cmake CMakeLists.txt] [files.metal...]
       (default: metal/*.metal and tests/metal_kernels/*.metal)
"""

from __future__ import annotations

import argparse
import bisect
import glob
import os
import re
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The MSL target when CMakeLists.txt has no -std=metalX.Y (it has: metal3.0).
DEFAULT_TARGET = (3, 0)
# The lowest GPU family the project runs on: Apple7 (M1). Features of later families fail.
TARGET_FAMILY = 7

BUFFER_SLOTS = 31  # buffer argument table entries per function (Metal feature set tables)
THREADGROUP_SLOTS = 31  # threadgroup memory argument table entries per compute function
TEXTURE_SLOTS = 128  # texture argument table entries (Apple6+ / Mac2)
SAMPLER_SLOTS = 16  # sampler state argument table entries

# ---- kernel input attributes (MSL table "attributes for kernel function input arguments") ----

# Position/size attributes: ushort or uint, scalar, 2- or 3-vector; one width per kernel.
GRID_ATTRS = (
    "thread_position_in_grid",
    "thread_position_in_threadgroup",
    "threadgroup_position_in_grid",
    "threads_per_grid",
    "threads_per_threadgroup",
    "threadgroups_per_grid",
    "dispatch_threads_per_threadgroup",
    "grid_origin",
    "grid_size",
)
# The ones of this group that the width rule covers (the notes after the MSL table name these).
WIDTH_ATTRS = GRID_ATTRS[:7]
# Index/count attributes: scalar ushort or uint.
SIMD_ATTRS = (
    "thread_index_in_simdgroup",
    "simdgroup_index_in_threadgroup",
    "simdgroups_per_threadgroup",
    "threads_per_simdgroup",
    "dispatch_simdgroups_per_threadgroup",
    "thread_index_in_quadgroup",
    "quadgroup_index_in_threadgroup",
    "quadgroups_per_threadgroup",
    "dispatch_quadgroups_per_threadgroup",
)
SCALAR_ATTRS = SIMD_ATTRS + ("thread_index_in_threadgroup", "thread_execution_width")
BUILTIN_ATTRS = set(GRID_ATTRS) | set(SCALAR_ATTRS)
# Attributes whose types must be equal (the same notes).
SAME_TYPE_GROUPS = (
    ("thread_position_in_grid", "threads_per_grid"),
    (
        "thread_position_in_threadgroup",
        "threads_per_threadgroup",
        "dispatch_threads_per_threadgroup",
    ),
    # SIMD-group/quad-group indices and counts: ushort or uint, the same one.
    tuple(a for a in SIMD_ATTRS if a != "thread_index_in_quadgroup"),
)
ADDRESS_SPACES = (
    "device",
    "constant",
    "threadgroup",
    "thread",
    "threadgroup_imageblock",
    "ray_data",
    "object_data",
)
KERNEL_POINTER_SPACES = ("device", "constant", "threadgroup")

# ---- features with a minimum MSL version / GPU family ----
#
# (name, regex, MSL version, lowest Apple GPU family or 0, where it is documented). Versions are
# the macOS ones of the MSL specification; families from Apple's Metal feature set tables
# ("SIMD-scoped permute/reduction/matrix operations", "quad-scoped permute operations", ...).
_SIMD_PERMUTE = (
    r"simd_(?:shuffle(?:_up|_down|_xor|_rotate_up|_rotate_down|_and_fill_up|_and_fill_down)?"
    r"|broadcast(?:_first)?)"
)
_SIMD_REDUCE = (
    r"simd_(?:sum|product|min|max|and|or|xor"
    r"|prefix_(?:inclusive|exclusive)_(?:sum|product))"
)
_SIMD_VOTE = r"simd_(?:all|any|ballot|is_first|is_helper_thread|active_threads_mask)"
_QUAD_PERMUTE = (
    r"quad_(?:shuffle(?:_up|_down|_xor|_rotate_up|_rotate_down|_and_fill_up|_and_fill_down)?"
    r"|broadcast(?:_first)?|all|any|ballot|is_first|active_threads_mask)"
)
_QUAD_REDUCE = (
    r"quad_(?:sum|product|min|max|and|or|xor|prefix_(?:inclusive|exclusive)_(?:sum|product))"
)
FEATURES = [
    (
        "simdgroup_matrix",
        r"simdgroup_(?:float|half|bfloat)8x8|simdgroup_matrix|make_filled_simdgroup_matrix"
        r"|simdgroup_(?:load|store|multiply|multiply_accumulate)",
        (2, 3),
        7,
        "MSL 2.3: SIMD-group matrix types and functions; SIMD-scoped matrix multiply: Apple7+",
    ),
    ("bfloat", r"bfloat[234]?|simdgroup_bfloat8x8", (3, 1), 0, "MSL 3.1: bfloat scalar type"),
    (
        "simd reductions",
        _SIMD_REDUCE,
        (2, 1),
        7,
        "MSL 2.1: SIMD-group reduction and scan functions; SIMD-scoped reduction: Apple7+",
    ),
    (
        "simd permutes",
        _SIMD_PERMUTE,
        (2, 0),
        6,
        "MSL 2.0: SIMD-group permute functions; SIMD-scoped permute: Apple6+",
    ),
    ("simd votes", _SIMD_VOTE, (2, 1), 6, "MSL 2.1: SIMD-group vote and ballot functions"),
    ("simdgroup_barrier", r"simdgroup_barrier", (2, 0), 0, "MSL 2.0: SIMD-group barrier"),
    (
        "quad permutes",
        _QUAD_PERMUTE,
        (2, 0),
        4,
        "MSL 2.0: quad-group functions; quad-scoped permute: Apple4+",
    ),
    ("quad reductions", _QUAD_REDUCE, (2, 1), 7, "MSL 2.1: quad-group reductions: Apple7+"),
    (
        "simdgroup attributes",
        r"thread_index_in_simdgroup|simdgroup_index_in_threadgroup|simdgroups_per_threadgroup"
        r"|threads_per_simdgroup|dispatch_simdgroups_per_threadgroup",
        (2, 0),
        0,
        "MSL 2.0: SIMD-group kernel input attributes",
    ),
    (
        "quadgroup attributes",
        r"thread_index_in_quadgroup|quadgroup_index_in_threadgroup|quadgroups_per_threadgroup"
        r"|dispatch_quadgroups_per_threadgroup",
        (2, 0),
        0,
        "MSL 2.0: quad-group kernel input attributes",
    ),
    (
        "atomic_float",
        r"atomic_float|atomic\s*<\s*float\s*>",
        (3, 0),
        7,
        "MSL 3.0: atomic_float (Metal 3: Apple7+, Mac2)",
    ),
    (
        "64-bit atomics",
        r"atomic_u?long|atomic\s*<\s*u?long\s*>",
        (2, 4),
        8,
        "MSL 2.4: 64-bit atomic min/max (Apple9, or Apple8 with Mac2)",
    ),
    (
        "64-bit integers",
        r"u?long[234]?|u?int64_t",
        (2, 2),
        0,
        "MSL 2.2: long and ulong scalar and vector types",
    ),
    (
        "function constants",
        r"function_constant|is_function_constant_defined",
        (1, 2),
        0,
        "MSL 1.2: function constants",
    ),
]
FEATURE_RES = [(n, re.compile(rf"\b(?:{rx})\b"), v, f, doc) for n, rx, v, f, doc in FEATURES]


@dataclass
class Param:
    line: int
    text: str  # the declaration as written (attributes included), one line
    type: str  # without attributes and the name, const/volatile removed
    name: str | None
    attrs: list[tuple[str, str | None]]  # (name, argument text)


@dataclass
class Kernel:
    path: str
    line: int
    name: str
    ret: str
    host_name: str | None
    template_params: set[str]
    is_template: bool
    params: list[Param] = field(default_factory=list)


@dataclass
class Source:
    path: str
    code: str  # comments blanked, host-only branches blanked (offsets and lines kept)
    scan: str  # code with string and character literals blanked too
    guard: list[tuple[int, int] | None]  # per line: the __METAL_VERSION__ guard, if any
    branch: list[tuple[tuple[int, int], ...]]  # per line: (#if number, branch number) nesting
    includes: list[str]
    newlines: list[int]

    def line_of(self, offset: int) -> int:
        return bisect.bisect_right(self.newlines, offset - 1) + 1


def rel(path: str) -> str:
    p = os.path.abspath(path)
    return os.path.relpath(p, ROOT) if p.startswith(ROOT + os.sep) else p


def exclusive(a: tuple, b: tuple) -> bool:
    """Lines in different branches of one #if (never compiled together)."""
    return any(i == j and m != n for i, m in a for j, n in b)


# ---- reading sources ----


def blank_comments(text: str) -> tuple[str, str]:
    """(text with comments blanked, text with comments and literals blanked); same offsets."""
    out, scan = list(text), list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = scan[k] = " "
            i = j
        elif c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if text[k] != "\n":
                    out[k] = scan[k] = " "
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                scan[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out), "".join(scan)


_VERSION_IF = re.compile(r"^#\s*if\s+__METAL_VERSION__\s*(>=|>)\s*(\d+)\s*$")
_METAL_IF = re.compile(
    r"^#\s*(?:ifdef\s+__METAL_VERSION__|if\s+defined\s*\(?\s*__METAL_VERSION__\s*\)?)\s*$"
)
_HOST_IF = re.compile(
    r"^#\s*(?:ifndef\s+__METAL_VERSION__|if\s+!\s*defined\s*\(?\s*__METAL_VERSION__\s*\)?)\s*$"
)


def preprocess(code: str, scan: str) -> tuple[str, str, list, list, list[str]]:
    """Blanks host-only branches and directives; per-line version guards and #if branches;
    local #includes."""
    lines, slines = code.split("\n"), scan.split("\n")
    # stack entries: [kind, this branch is MSL-visible, guard or None, #if number, branch]
    stack: list[list] = []
    guards: list = []
    branches: list = []
    includes: list[str] = []
    n_if = 0
    for idx, line in enumerate(lines):
        s = line.strip()
        visible = all(e[1] for e in stack)
        guard = max((e[2] for e in stack if e[2] is not None), default=None)
        branches.append(tuple((e[3], e[4]) for e in stack))
        if s.startswith("#"):
            d = re.sub(r"\s+", " ", s)
            m = _VERSION_IF.match(d)
            opened = None
            if m:
                v = int(m.group(2))
                v = (v // 10 + 1) * 10 if m.group(1) == ">" else v  # versions step by 10
                opened = ["version", True, (v // 100, v % 100 // 10)]
            elif _METAL_IF.match(d):
                opened = ["metal", True, None]
            elif _HOST_IF.match(d):
                opened = ["host", False, None]
            elif re.match(r"#\s*if(n?def)?\b", d):
                opened = ["other", True, None]
            elif re.match(r"#\s*(else|elif)\b", d) and stack:
                kind, number, branch = stack[-1][0], stack[-1][3], stack[-1][4] + 1
                if d.startswith("#else") and kind in ("metal", "host"):
                    flipped = "host" if kind == "metal" else "metal"
                    stack[-1] = [flipped, kind == "host", None, number, branch]
                else:
                    stack[-1] = ["other", True, None, number, branch]
            elif re.match(r"#\s*endif\b", d) and stack:
                stack.pop()
            else:
                m = re.match(r'#\s*include\s*"([^"]+)"', line.strip())
                if m and visible:
                    includes.append(m.group(1))
            if opened:
                n_if += 1
                stack.append(opened + [n_if, 0])
            lines[idx] = " " * len(line)
            slines[idx] = " " * len(slines[idx])
        elif not visible:
            lines[idx] = " " * len(line)
            slines[idx] = " " * len(slines[idx])
        guards.append(guard)
    return "\n".join(lines), "\n".join(slines), guards, branches, includes


_cache: dict[str, Source] = {}


def load(path: str) -> Source:
    path = os.path.abspath(path)
    if path not in _cache:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        code, scan = blank_comments(text)
        code, scan, guards, branches, incs = preprocess(code, scan)
        here = os.path.dirname(path)
        includes = []
        for inc in incs:
            p = os.path.normpath(os.path.join(here, inc))
            if os.path.exists(p):
                includes.append(p)
        newlines = [i for i, c in enumerate(code) if c == "\n"]
        _cache[path] = Source(path, code, scan, guards, branches, includes, newlines)
    return _cache[path]


def translation_unit(path: str) -> list[Source]:
    """The file and the local headers it includes, transitively, each once."""
    seen: list[Source] = []
    todo = [os.path.abspath(path)]
    while todo:
        p = todo.pop(0)
        if any(s.path == p for s in seen):
            continue
        src = load(p)
        seen.append(src)
        todo.extend(src.includes)
    return seen


# ---- kernels ----

_KERNEL = re.compile(
    r"(?<![\w\[])(?:kernel|\[\[\s*kernel\s*\]\])\s+(?P<attrs>(?:\[\[[^\]]*\]\]\s*)*)"
    r"(?P<ret>(?!decltype\b)[A-Za-z_][\w:]*(?:\s*<[^()<>;{}]*>)?)\s+"
    r"(?P<name>[A-Za-z_]\w*)\s*\("
)
_TEMPLATE_HEAD = re.compile(r"template\s*<(?P<params>[^<>]*(?:<[^<>]*>[^<>]*)*)>\s*$")
_ATTR = re.compile(r"\[\[(.*?)\]\]", re.S)


def matching(text: str, i: int, open_: str, close: str) -> int:
    depth = 0
    for j in range(i, len(text)):
        if text[j] == open_:
            depth += 1
        elif text[j] == close:
            depth -= 1
            if depth == 0:
                return j
    return -1


def split_top(text: str, sep: str = ",") -> list[tuple[int, str]]:
    """Splits at top-level separators: [(offset, piece)]."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append((start, text[start:i]))
            start = i + 1
    parts.append((start, text[start:]))
    return parts


def parse_attrs(text: str) -> list[tuple[str, str | None]]:
    out = []
    for m in _ATTR.finditer(text):
        for _, a in split_top(m.group(1)):
            a = a.strip()
            if not a:
                continue
            am = re.match(r"([\w:]+)\s*(?:\((.*)\))?\s*$", a, re.S)
            if am:
                out.append((am.group(1), am.group(2).strip() if am.group(2) else None))
    return out


_QUALIFIERS = ("const", "volatile", "restrict", *ADDRESS_SPACES)
# Something of a type before the last word (else that word is the type of an unnamed parameter).
_TYPE_WORD = re.compile(rf"[*&]|\b(?!(?:{'|'.join(_QUALIFIERS)})\b)[A-Za-z_]")


def parse_param(src: Source, offset: int, text: str) -> Param | None:
    decl = " ".join(text.split())
    if not decl or decl == "void":
        return None
    attrs = parse_attrs(decl)
    bare = " ".join(_ATTR.sub(" ", decl).split())
    name = None
    m = re.match(r"^(.*?)\s*\b([A-Za-z_]\w*)$", bare)
    if m and re.search(_TYPE_WORD, m.group(1)):
        bare, name = m.group(1), m.group(2)
    typ = " ".join(t for t in re.split(r"\s+", bare) if t not in ("const", "volatile"))
    lead = len(text) - len(text.lstrip())
    return Param(src.line_of(offset + lead), decl, typ.strip(), name, attrs)


def find_kernels(src: Source) -> list[Kernel]:
    kernels = []
    for m in _KERNEL.finditer(src.code):
        open_paren = m.end() - 1
        close = matching(src.code, open_paren, "(", ")")
        if close < 0:
            continue
        head = src.code[: m.start()].rstrip()
        tmpl = _TEMPLATE_HEAD.search(head)
        tparams = set()
        if tmpl:
            for _, p in split_top(tmpl.group("params")):
                w = re.findall(r"[A-Za-z_]\w*", p)
                if w:
                    tparams.add(w[-1])
        host = re.search(r'host_name\s*\(\s*"([^"]*)"', src.code[m.start() : m.end()])
        host = host or re.search(r'\[\[\s*host_name\s*\(\s*"([^"]*)"\s*\)\s*\]\]\s*$', head)
        k = Kernel(
            src.path,
            src.line_of(m.start()),
            m.group("name"),
            " ".join(m.group("ret").split()),
            host.group(1) if host else None,
            tparams,
            bool(tmpl),
        )
        body = src.code[open_paren + 1 : close]
        for off, piece in split_top(body):
            p = parse_param(src, open_paren + 1 + off, piece)
            if p:
                k.params.append(p)
        kernels.append(k)
    return kernels


_INSTANTIATION = re.compile(
    r"\btemplate\s*(?P<attrs>(?:\[\[[^\]]*\]\]\s*)+)(?:kernel\s+)?(?P<rest>[^;{}]*);"
)


def instantiated_host_names(src: Source) -> list[tuple[str, int]]:
    out = []
    for m in _INSTANTIATION.finditer(src.code):
        h = re.search(r'host_name\s*\(\s*"([^"]*)"', m.group("attrs"))
        if h:
            out.append((h.group(1), src.line_of(m.start())))
    return out


# ---- rules ----


def base_type(t: str) -> str:
    t = re.sub(r"\bmetal::", "", t).strip()
    t = re.sub(r"\bunsigned\s+int\b|\buint32_t\b", "uint", t)
    t = re.sub(r"\bunsigned\s+short\b|\buint16_t\b", "ushort", t)
    m = re.match(r"^vec\s*<\s*(\w+)\s*,\s*(\d)\s*>$", t)
    if m:
        t = m.group(1) + m.group(2)
    return " ".join(t.split())


def int_type(t: str) -> tuple[str, int] | None:
    """('uint' | 'ushort', components) for ushort/uint and their vectors, else None."""
    m = re.match(r"^(ushort|uint)([234])?$", base_type(t))
    if not m:
        return None
    return m.group(1), int(m.group(2) or 1)


def describe(p: Param) -> str:
    return f"`{p.text}`"


def width(n: int) -> str:
    return "scalar" if n == 1 else f"{n}-wide"


SLOTS = {
    "buffer": BUFFER_SLOTS,
    "threadgroup": THREADGROUP_SLOTS,
    "texture": TEXTURE_SLOTS,
    "sampler": SAMPLER_SLOTS,
}


def check_kernel(k: Kernel, out: list) -> None:
    where = rel(k.path)

    def report(line: int, rule: str, msg: str) -> None:
        out.append((where, line, rule, msg))

    if k.ret != "void":
        report(k.line, "kernel-return", f"kernel {k.name} returns {k.ret}; kernels return void")

    builtins: dict[str, Param] = {}
    indices: dict[str, dict[str, Param]] = {}
    for p in k.params:
        names = [a for a, _ in p.attrs]
        space = next((s for s in ADDRESS_SPACES if re.search(rf"\b{s}\b", p.type)), None)
        indirect = "*" in p.type or "&" in p.type
        for a, arg in p.attrs:
            if a in BUILTIN_ATTRS:
                if a in builtins:
                    report(p.line, "builtin-type", f"[[{a}]] given twice in kernel {k.name}")
                builtins.setdefault(a, p)
                if base_type(p.type) in k.template_params:
                    continue  # a template parameter: the instantiation decides
                it = int_type(p.type)
                if a in SCALAR_ATTRS:
                    allowed = "ushort or uint"
                else:
                    allowed = "ushort, uint or their 2-/3-vectors"
                if it is None or it[1] > (1 if a in SCALAR_ATTRS else 3):
                    report(
                        p.line,
                        "builtin-type",
                        f"{describe(p)}: [[{a}]] must be {allowed}, not {p.type}",
                    )
            if a in SLOTS:
                limit = SLOTS[a]
                key = " ".join((arg or "").split())
                seen = indices.setdefault(a, {})
                if key in seen:
                    q = seen[key]
                    report(
                        p.line,
                        f"{a}-index",
                        f"[[{a}({key})]] of {p.name} also binds {q.name} (line {q.line}) "
                        f"in kernel {k.name}",
                    )
                else:
                    seen[key] = p
                if re.fullmatch(r"\d+", key) and int(key) >= limit:
                    report(
                        p.line,
                        f"{a}-index",
                        f"[[{a}({key})]]: indices run 0..{limit - 1} "
                        f"({limit} argument table entries)",
                    )
        if "buffer" in names and indirect and space not in ("device", "constant"):
            report(
                p.line,
                "address-space",
                f"{describe(p)}: a [[buffer]] pointer or reference is device or constant, "
                f"not {space or 'unqualified'}",
            )
        elif "threadgroup" in names and (not indirect or space != "threadgroup"):
            report(
                p.line,
                "address-space",
                f"{describe(p)}: a [[threadgroup]] argument is a threadgroup pointer or reference",
            )
        elif indirect and space not in KERNEL_POINTER_SPACES:
            report(
                p.line,
                "address-space",
                f"{describe(p)}: pointer and reference arguments of a kernel are device, "
                f"constant or threadgroup, not {space or 'unqualified'}",
            )

    # One width for every position/size attribute (the first one declared sets it).
    sized = sorted((builtins[a] for a in WIDTH_ATTRS if a in builtins), key=lambda p: p.line)
    typed = [(p, int_type(p.type)) for p in sized if int_type(p.type)]
    for p, t in typed[1:]:
        p0, t0 = typed[0]
        if t[1] != t0[1]:
            report(
                p.line,
                "builtin-width",
                f"{describe(p)} is {width(t[1])} but {describe(p0)} (line {p0.line}) is "
                f"{width(t0[1])}: the position/size attributes of a kernel must all have the "
                "same number of components",
            )
    # Types that must be equal.
    for group in SAME_TYPE_GROUPS:
        members = sorted(
            ((a, builtins[a]) for a in group if a in builtins and int_type(builtins[a].type)),
            key=lambda ap: ap[1].line,
        )
        for a, p in members[1:]:
            a0, p0 = members[0]
            t, t0 = int_type(p.type), int_type(p0.type)
            if t[1] == t0[1] and t != t0:  # a width mismatch is reported above
                report(
                    p.line,
                    "builtin-type-match",
                    f"[[{a}]] is {p.type} but [[{a0}]] (line {p0.line}) is {p0.type}: "
                    "they must have the same type",
                )
    if "thread_index_in_threadgroup" in builtins and "thread_position_in_threadgroup" in builtins:
        p, p0 = builtins["thread_index_in_threadgroup"], builtins["thread_position_in_threadgroup"]
        t, t0 = int_type(p.type), int_type(p0.type)
        if t and t0 and t[0] != t0[0]:
            report(
                p.line,
                "builtin-type-match",
                f"[[thread_index_in_threadgroup]] is {p.type} but "
                f"[[thread_position_in_threadgroup]] (line {p0.line}) is {p0.type}: use {t0[0]}",
            )
    if "thread_execution_width" in builtins and "threads_per_simdgroup" in builtins:
        report(
            builtins["threads_per_simdgroup"].line,
            "builtin-conflict",
            f"kernel {k.name} declares both [[thread_execution_width]] and "
            "[[threads_per_simdgroup]] (the same value; the compiler rejects both)",
        )


def read_target(cmake: str) -> tuple[tuple[int, int], str]:
    """The lowest -std=metalX.Y in the CMake file, and where it came from."""
    found = []
    if os.path.exists(cmake):
        with open(cmake, encoding="utf-8") as f:
            for line in f:
                line = line.split("#", 1)[0]
                for m in re.finditer(r"-std=(?:macos-|ios-)?metal(\d+)\.(\d+)", line):
                    found.append((int(m.group(1)), int(m.group(2))))
    if found:
        return min(found), rel(cmake)
    return DEFAULT_TARGET, "check_msl.py DEFAULT_TARGET"


def vstr(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def requirements(tu: list[Source]) -> dict[str, tuple]:
    """feature -> (version, family, file, line, matched text, doc): its first unguarded use."""
    need = {}
    for src in tu:
        for name, rx, version, family, doc in FEATURE_RES:
            if name in need:
                continue
            for m in rx.finditer(src.scan):
                line = src.line_of(m.start())
                guard = src.guard[line - 1]
                if guard is not None and version <= guard:
                    continue
                need[name] = (version, family, src.path, line, m.group(0), doc)
                break
    return need


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="*", help="default: metal/*.metal tests/metal_kernels/*.metal")
    ap.add_argument("--summary", action="store_true", help="print what each file needs")
    ap.add_argument("--target", help="MSL target X.Y (default: CMakeLists.txt's -std=metalX.Y)")
    ap.add_argument("--cmake", default=os.path.join(ROOT, "CMakeLists.txt"))
    opts = ap.parse_args(argv)

    files = opts.files or sorted(glob.glob(os.path.join(ROOT, "metal", "*.metal"))) + sorted(
        glob.glob(os.path.join(ROOT, "tests", "metal_kernels", "*.metal"))
    )
    if opts.target:
        m = re.fullmatch(r"(?:metal)?(\d+)\.(\d+)", opts.target)
        if not m:
            ap.error("--target wants X.Y, e.g. 3.0")
        target, origin = (int(m.group(1)), int(m.group(2))), "--target"
    else:
        target, origin = read_target(opts.cmake)

    violations: list[tuple[str, int, str, str]] = []
    checked: set[tuple[str, int]] = set()
    names: dict[str, list[tuple[str, int, tuple, str]]] = {}
    reported: set[tuple[str, int, str]] = set()
    n_kernels = 0
    summary = []
    for f in files:
        tu = translation_unit(f)

        # Kernel signatures, once per definition; the kernel names this file defines.
        symbols: list[tuple[str, str, int, tuple]] = []
        for src in tu:
            for k in find_kernels(src):
                if (k.path, k.line) not in checked:
                    checked.add((k.path, k.line))
                    n_kernels += 1
                    check_kernel(k, violations)
                if not k.is_template:
                    symbols.append((k.host_name or k.name, k.path, k.line, src.branch[k.line - 1]))
            for h, line in instantiated_host_names(src):
                symbols.append((h, src.path, line, src.branch[line - 1]))
        for sym, path, line, branch in symbols:
            seen = names.setdefault(sym, [])
            again = [t for p, n, _, t in seen if p == path and n == line]
            if again:
                # One definition in a header that two files include: two symbols.
                violations.append(
                    (
                        rel(path),
                        line,
                        "host-name",
                        f'kernel "{sym}" is defined in both {rel(again[0])} and {rel(f)} '
                        "(through this header): one library, one name",
                    )
                )
                continue
            clash = [(p, n) for p, n, b, _ in seen if not (p == path and exclusive(b, branch))]
            if clash:
                violations.append(
                    (
                        rel(path),
                        line,
                        "host-name",
                        f'kernel "{sym}" is also defined at {rel(clash[0][0])}:{clash[0][1]} '
                        "(one library, one name)",
                    )
                )
            seen.append((path, line, branch, f))

        # What the file needs, against the targets.
        need = requirements(tu)
        for name, (v, fam, path, line, text, doc) in sorted(need.items()):
            if (path, line, name) in reported:
                continue  # a header's use, reported through an earlier file
            if v > target:
                reported.add((path, line, name))
                violations.append(
                    (
                        rel(path),
                        line,
                        "msl-version",
                        f"{text} ({doc}) needs MSL {vstr(v)}; "
                        f"the target is metal{vstr(target)} ({origin})",
                    )
                )
            if fam > TARGET_FAMILY:
                reported.add((path, line, name))
                violations.append(
                    (
                        rel(path),
                        line,
                        "gpu-family",
                        f"{text} ({doc}) needs Apple{fam}; "
                        f"the target is Apple{TARGET_FAMILY} (TARGET_FAMILY)",
                    )
                )
        version = max((v for v, *_ in need.values()), default=(1, 0))
        family = max((fam for _, fam, *_ in need.values()), default=0)
        uses = ", ".join(
            f"{n} {vstr(v)}{f' Apple{fam}+' if fam else ''} ({rel(path)}:{line})"
            for n, (v, fam, path, line, _, _) in sorted(need.items(), key=lambda kv: kv[1][:2])
        )
        summary.append(
            f"{rel(f)}: MSL {vstr(version)}, "
            f"{f'Apple{family}+' if family else 'any GPU family'}: "
            f"{uses or 'nothing beyond MSL 1.0'}"
        )

    violations.sort(key=lambda v: (v[0], v[1], v[2]))
    for path, line, rule, msg in violations:
        print(f"{path}:{line}: {rule}: {msg}")
    if opts.summary:
        print(f"target: metal{vstr(target)} ({origin}), Apple{TARGET_FAMILY} (TARGET_FAMILY)")
        for s in summary:
            print(s)
    print(
        f"check_msl: {len(files)} files, {n_kernels} kernels, {len(violations)} violations",
        file=sys.stderr,
    )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
