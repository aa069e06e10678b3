#!/usr/bin/env python3
"""Build-time generator of the Metal simulator (Python 3 standard library only).

For one .metal file it writes
  * a rewritten copy of the file and of every local header it includes ("..." includes),
    under OUT/src/<path relative to ROOT>, each starting with a #line directive naming the
    original file, with line numbers preserved, so compiler errors and simulator aborts point
    at the original .metal source;
  * OUT/<stem>.sim.cpp: a C++ translation unit that includes the rewritten copy and registers
    one launcher per kernel host name with the simulator's runtime;
  * OUT/<stem>.count.sim.cpp: the same kernels again in namespace msim_counting, built with the
    memory-traffic instrumentation; its launchers run while counting is on.

The rewrite is small and keeps every line where it was:
  * `constant T name [[function_constant(i)]];` -> a metal::function_constant_t<T, i> object
  * `threadgroup T name[N];` in a kernel body    -> a reference to per-threadgroup storage
  * `v.xy` (and .yz .zw .xyz) swizzle reads      -> `v.xy()`
  * every other `[[...]]` attribute               -> removed (g++ rejects or ignores them)

Kernels found:
  * `kernel void name(...)` / `[[kernel]] void name(...)`: host name = name
  * `template [[host_name("x")]] kernel void name<Args>(...);`
  * `template [[host_name("x")]] [[kernel]] decltype(name<Args>) name<Args>;` (parameters are
    taken from the template's definition in the file or its local headers)
"""

import argparse
import os
import re
import sys

BUILTINS = {
    "thread_position_in_grid": "a.tpig",
    "threadgroup_position_in_grid": "a.tgpig",
    "thread_position_in_threadgroup": "a.tpitg",
    "threads_per_threadgroup": "a.ntg",
    "dispatch_threads_per_threadgroup": "a.ntg",
    "threadgroups_per_grid": "a.ntgs",
    "threads_per_grid": "a.tpg",
    "thread_index_in_threadgroup": "&a.tiitg",
    "thread_index_in_simdgroup": "&a.lane",
    "simdgroup_index_in_threadgroup": "&a.sgitg",
    "simdgroups_per_threadgroup": "&a.nsg",
    "dispatch_simdgroups_per_threadgroup": "&a.nsg",
    "threads_per_simdgroup": "k_simd_width",
}


class GenError(Exception):
    pass


def mask_code(text):
    """Same-length copy of text with comments and string/char literals blanked (newlines kept),
    so regexes over it never match inside them."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            # keep the quotes, blank the contents
            for k in range(i + 1, min(j, n)):
                if out[k] != "\n":
                    out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def match_close(masked, pos, open_ch, close_ch):
    """Index of the bracket closing the one at pos."""
    depth = 0
    for i in range(pos, len(masked)):
        if masked[i] == open_ch:
            depth += 1
        elif masked[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise GenError(f"unbalanced {open_ch} at offset {pos}")


def split_top(s):
    """Split a parameter list at commas outside (), [], <>."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([<":
            depth += 1
        elif ch in ")]>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


ATTR_RE = re.compile(r"\[\[\s*(\w+)\s*(?:\(([^)]*)\))?\s*\]\]")


class Param(tuple):
    """A kernel parameter, (kind, value), plus .constant: a [[buffer(n)]] declared in the
    constant address space (memory-traffic counting leaves those out of device memory)."""

    constant = False

    @classmethod
    def of(cls, kind, value, constant=False):
        p = cls((kind, value))
        p.constant = constant
        return p


def parse_params(params_text, path, line):
    params = []
    for p in split_top(params_text):
        attrs = ATTR_RE.findall(p)
        bare = ATTR_RE.sub(" ", p)
        if not attrs:
            raise GenError(
                f"{path}:{line}: kernel parameter without attribute: {' '.join(p.split())}"
            )
        name, arg = attrs[0]
        if name == "buffer":
            kind = "ref" if "&" in bare else "ptr"
            constant = re.match(r"\s*constant\b", mask_code(bare)) is not None
            params.append(Param.of(kind, int(arg, 0), constant))
        elif name == "threadgroup":
            params.append(Param.of("tg", int(arg, 0)))
        elif name in BUILTINS:
            params.append(Param.of("builtin", name))
        else:
            raise GenError(f"{path}:{line}: unsupported kernel parameter attribute [[{name}]]")
    return params


FC_RE = re.compile(
    r"\bconstant\s+(\w+)\s+(\w+)\s*\[\[\s*function_constant\s*\(\s*(\w+)\s*\)\s*\]\]\s*;"
)
TG_DECL_RE = re.compile(
    r"\bthreadgroup\s+((?:const\s+)?[A-Za-z_][\w:]*(?:\s*<[^;{}()]*?>)?)"  # type
    r"\s+([A-Za-z_]\w*)"  # name
    r"\s*((?:\[[^\];]*\]\s*)*);"  # array dimensions
)
SWIZZLE_RE = re.compile(r"\.(xyz|xy|yz|zw)\b(?!\s*\()")
ANY_ATTR_RE = re.compile(r"\[\[.*?\]\]", re.S)
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def rewrite(text, opencl=False):
    """Returns the C++-compilable copy of MSL text, with the same number of lines.
    opencl=True: the variant for the clang C++-for-OpenCL address-space check
    (.ci/check_metal_address_spaces.py), where function constants become plain constants."""
    masked = mask_code(text)
    edits = []  # (start, end, replacement)

    for m in FC_RE.finditer(masked):
        if opencl:
            edits.append(
                (m.start(), m.end(), f"constant {m.group(1)} {m.group(2)} = {m.group(1)}();")
            )
            continue
        edits.append(
            (
                m.start(),
                m.end(),
                f"static constexpr ::metal::function_constant_t<{m.group(1)}, {m.group(3)}> "
                f'{m.group(2)}{{"{m.group(2)}", __FILE__, __LINE__}};',
            )
        )
    for m in TG_DECL_RE.finditer(masked):
        ty, name, dims = m.group(1), m.group(2), "".join(m.group(3).split())
        edits.append(
            (m.start(), m.end(), f"auto& {name} = ::msim::tg_var<{ty}{dims}>(__FILE__, __LINE__);")
        )
    taken = [(s, e) for s, e, _ in edits]

    def free(s, e):
        return all(e <= ts or s >= te for ts, te in taken)

    for m in ANY_ATTR_RE.finditer(masked):
        if free(m.start(), m.end()):
            # keep newlines so line numbers do not move
            edits.append((m.start(), m.end(), "\n" * masked.count("\n", m.start(), m.end())))
    for m in SWIZZLE_RE.finditer(masked):
        if free(m.start(), m.end()):
            edits.append((m.start(), m.end(), "." + m.group(1) + "()"))

    edits.sort()
    out, pos = [], 0
    for s, e, r in edits:
        if s < pos:
            continue
        out.append(text[pos:s])
        # a replacement spanning lines gets the newlines back at its end
        out.append(r + "\n" * (text.count("\n", s, e) - r.count("\n")))
        pos = e
    out.append(text[pos:])
    return "".join(out)


KERNEL_RE = re.compile(r"(?:\bkernel\s+|\[\[\s*kernel\s*\]\]\s*)void\s+(\w+)\s*(<)?")
HOST_NAME_RE = re.compile(r'host_name\s*\(\s*"([^"]+)"\s*\)')
DECLTYPE_INST_RE = re.compile(r"\btemplate\s*\[\[\s*host_name\s*\(")


def statement_prefix(masked, pos):
    """Text from the previous statement boundary up to pos."""
    i = pos - 1
    while i >= 0 and masked[i] not in ";{}":
        i -= 1
    return i + 1


def find_kernels(path, text, definitions):
    """Kernels registered by this file: (host_name, call_name, params, line)."""
    masked = mask_code(text)
    found = []
    for m in KERNEL_RE.finditer(masked):
        start = statement_prefix(masked, m.start())
        prefix = text[start : m.start()]
        name = m.group(1)
        pos = m.end()
        targs = ""
        if m.group(2):
            close = match_close(masked, m.start(2), "<", ">")
            targs = text[m.start(2) : close + 1]
            pos = close + 1
        while masked[pos].isspace():
            pos += 1
        if masked[pos] != "(":
            continue
        close = match_close(masked, pos, "(", ")")
        line = line_of(text, m.start())
        try:
            params = parse_params(text[pos + 1 : close], path, line)
        except GenError:
            # An explicit instantiation may leave the attributes to the template's definition.
            if not (targs and name in definitions):
                raise
            params = definitions[name]
        if re.search(r"\btemplate\s*<", mask_code(prefix)):
            definitions.setdefault(
                name, params
            )  # template definition: registered by instantiations
            continue
        hn = HOST_NAME_RE.search(prefix)
        host = hn.group(1) if hn else name
        if targs and not hn:
            raise GenError(f"{path}:{line}: explicit instantiation of {name} without [[host_name]]")
        if not targs:
            definitions.setdefault(name, params)
        found.append((host, name + targs, params, line))
    return found


def find_decltype_instantiations(path, text, definitions):
    """Instantiations without a parameter list: `template [[host_name("x")]] [[kernel]]
    decltype(f<A>) f<A>;` or, llama.cpp style, `template [[host_name("x")]] kernel f_t f<A>;`."""
    masked = mask_code(text)
    found = []
    for m in DECLTYPE_INST_RE.finditer(masked):
        end = masked.find(";", m.end())
        stmt = text[m.start() : end]
        mstmt = masked[m.start() : end]
        if re.search(r"\bvoid\s+\w+\s*<", mstmt):
            continue  # the `kernel void name<...>(...)` form, handled by find_kernels
        host = HOST_NAME_RE.search(stmt).group(1)
        line = line_of(text, m.start())
        # the instantiated function is the trailing `name<...>`
        if not mstmt.rstrip().endswith(">"):
            raise GenError(
                f'{path}:{line}: cannot read the instantiation for [[host_name("{host}")]]'
            )
        close = len(mstmt.rstrip()) - 1
        depth, i = 0, close
        while i >= 0:
            if mstmt[i] == ">":
                depth += 1
            elif mstmt[i] == "<":
                depth -= 1
                if depth == 0:
                    break
            i -= 1
        nm = re.search(r"(\w+)\s*$", mstmt[:i])
        name = nm.group(1)
        inner = name + stmt[i : close + 1]
        if name not in definitions:
            raise GenError(
                f'{path}:{line}: no kernel template named {name} for [[host_name("{host}")]]'
            )
        found.append((host, inner, definitions[name], line))
    return found


def local_includes(path, text):
    base = os.path.dirname(path)
    for inc in INCLUDE_RE.findall(mask_code_keep_strings(text)):
        p = os.path.normpath(os.path.join(base, inc))
        if os.path.exists(p):
            yield p


def mask_code_keep_strings(text):
    # include paths are strings: blank comments only
    return re.sub(
        r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S
    )


def emit_launcher_args(params):
    args = []
    for kind, v in params:
        if kind == "ptr":
            args.append(f"::msim::BufPtr{{a.buffers[{v:d}]}}")
        elif kind == "ref":
            args.append(f"::msim::BufRef{{a.buffers[{v:d}]}}")
        elif kind == "tg":
            args.append(f"::msim::BufPtr{{a.tg[{v:d}]}}")
        else:
            args.append(f"::msim::Builtin{{{BUILTINS[v]}}}")
    return ", ".join(args)


def c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def generate(metal_path, root, out_dir):
    metal_path = os.path.abspath(metal_path)
    root = os.path.abspath(root)
    # Rewrite the file and its local headers (recursively) into OUT/src/...
    todo, seen, texts = [metal_path], set(), {}
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        with open(p, encoding="utf-8") as f:
            texts[p] = f.read()
        todo.extend(local_includes(p, texts[p]))
    for p, text in texts.items():
        rel = os.path.relpath(p, root)
        if rel.startswith(".."):
            raise GenError(f"{p} is outside {root}")
        dst = os.path.join(out_dir, "src", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        content = f"#line 1 {c_string(p)}\n{rewrite(text)}"
        # Only touch the file when it changed, so unrelated rebuilds stay incremental.
        if not os.path.exists(dst) or open(dst, encoding="utf-8").read() != content:
            with open(dst, "w", encoding="utf-8") as f:
                f.write(content)

    # Kernel templates may live in headers; their definitions are collected first.
    definitions = {}
    for p, text in texts.items():
        if p != metal_path:
            find_kernels(p, text, definitions)
    kernels = find_kernels(metal_path, texts[metal_path], definitions)
    kernels += find_decltype_instantiations(metal_path, texts[metal_path], definitions)

    stem = os.path.basename(metal_path).replace(".", "_")
    rel = os.path.relpath(metal_path, root)
    lines = [
        f"// Generated by cpp/metal/sim/gen_kernels.py from {rel}. Do not edit.",
        "#include {}".format(c_string(os.path.join("src", rel))),
        "",
        "namespace {",
        "const uint32_t k_simd_width[3] = {32, 1, 1};",
    ]
    infos = []
    for i, (host, call, params, line) in enumerate(kernels):
        n_buf = max([v + 1 for k, v in params if k in ("ptr", "ref")] + [0])
        n_tg = max([v + 1 for k, v in params if k == "tg"] + [0])
        const_mask = sum(1 << p[1] for p in params if p.constant and p[1] < 64)
        lines.append(
            f"void launch_{i:d}(const ::msim::ThreadArgs& a) "
            f"{{ {call}({emit_launcher_args(params)}); }}"
        )
        lines.append(
            f"const ::msim::KernelInfo info_{i:d} = {{{c_string(host)}, {c_string(metal_path)}, "
            f"{line:d}, launch_{i:d}, {n_buf:d}, {n_tg:d}, {const_mask:#x}ull}};"
        )
        infos.append(i)
    registrations = " && ".join(f"::msim::register_kernel(info_{i:d})" for i in infos)
    lines.append(f"const bool registered = {registrations or 'true'};")
    lines.append("}  // namespace")
    lines.append("// keep the linker from dropping this file's registrations")
    lines.append(
        f'extern "C" int msim_kernels_{stem}() {{ return registered ? {len(infos):d} : 0; }}'
    )
    os.makedirs(out_dir, exist_ok=True)
    write_if_changed(os.path.join(out_dir, os.path.basename(metal_path) + ".sim.cpp"), lines)

    # The counting variant: the same kernels compiled again, with the memory-traffic
    # instrumentation (CMakeLists.txt gives this file -fsanitize=thread), inside a namespace of
    # its own so that its inline functions and templates do not merge with the plain ones at
    # link time. The simulator runs these launchers while counting is on (README, "Memory
    # traffic"), the plain ones otherwise, so counting costs nothing when off.
    counting = [
        f"// Generated by cpp/metal/sim/gen_kernels.py from {rel}: the memory-traffic counting",
        "// variant (see the .sim.cpp beside it). Do not edit.",
        "#define MSIM_COUNTING_TU 1",
        "#include <metal_stdlib>",
        "namespace msim_counting {",
        "#include {}".format(c_string(os.path.join("src", rel))),
        "namespace {",
        "const uint32_t k_simd_width[3] = {32, 1, 1};",
    ]
    for i, (_, call, params, _) in enumerate(kernels):
        counting.append(
            f"void launch_{i:d}(const ::msim::ThreadArgs& a) "
            f"{{ {call}({emit_launcher_args(params)}); }}"
        )
    registrations = " && ".join(
        f"::msim::register_counting_launcher({c_string(host)}, launch_{i:d})"
        for i, (host, _, _, _) in enumerate(kernels)
    )
    counting.append(f"const bool registered = {registrations or 'true'};")
    counting.append("}  // namespace")
    counting.append("}  // namespace msim_counting")
    counting.append(
        f'extern "C" int msim_counting_kernels_{stem}() '
        f"{{ return msim_counting::registered ? {len(kernels):d} : 0; }}"
    )
    count_out = os.path.join(out_dir, os.path.basename(metal_path) + ".count.sim.cpp")
    write_if_changed(count_out, counting)
    return kernels


def write_if_changed(path, lines):
    # Only touch the file when it changed, so unrelated rebuilds stay incremental.
    content = "\n".join(lines) + "\n"
    if not os.path.exists(path) or open(path, encoding="utf-8").read() != content:
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--root", required=True, help="source root; rewritten copies mirror paths below it"
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--list", action="store_true", help="print the kernels found")
    ap.add_argument("metal", nargs="+")
    ns = ap.parse_args()
    try:
        for m in ns.metal:
            ks = generate(m, ns.root, ns.out)
            if ns.list:
                for host, call, params, line in ks:
                    print(f"{m}:{line:d}: {host} -> {call}({len(params):d} params)")
    except GenError as e:
        print(f"gen_kernels.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
