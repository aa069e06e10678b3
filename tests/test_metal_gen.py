"""cpp/metal/sim/gen_kernels.py: the source rewrite keeps lines, and every instantiation form is
found."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "cpp", "metal", "sim"))
import gen_kernels  # noqa: E402

SAMPLE = """#include <metal_stdlib>
using namespace metal;
constant bool has_bias [[function_constant(2)]];
// kernel void commented_out(device float* x [[buffer(0)]]) {}
template <typename T, int N>
kernel void k(device const T* x [[buffer(0)]],
              constant int& n [[buffer(3)]],
              threadgroup float* tg [[threadgroup(1)]],
              uint2 tgpig [[threadgroup_position_in_grid]],
              ushort lane [[thread_index_in_simdgroup]]) {
    threadgroup float partial[N * 2];
    threadgroup atomic_uint counter;
    float2 v = float4(1.0f).xy;
    const char* s = "threadgroup float not_a_decl[4];";
}
typedef decltype(k<float, 4>) k_t;
template [[host_name("k_a")]] [[kernel]] decltype(k<float, 4>) k<float, 4>;
template [[host_name("k_b")]] kernel k_t k<half, 8>;
template [[host_name("k_c")]] kernel void k<float, 2>(device const float*, constant int&,
                                                      threadgroup float*, uint2, ushort);
kernel void plain(device float* out [[buffer(1)]], uint i [[thread_position_in_grid]]) {
    out[i] = 0;
}
"""


def test_rewrite_keeps_lines_and_rewrites_what_it_must():
    out = gen_kernels.rewrite(SAMPLE)
    assert out.count("\n") == SAMPLE.count("\n")
    lines = out.splitlines()
    assert "function_constant_t<bool, 2> has_bias" in lines[2]
    assert "auto& partial = ::msim::tg_var<float[N*2]>" in lines[10]
    assert "auto& counter = ::msim::tg_var<atomic_uint>" in lines[11]
    assert ".xy()" in lines[12]
    assert '"threadgroup float not_a_decl[4];"' in lines[13]  # strings untouched
    assert "[[buffer(0)]]" in lines[3]  # comments untouched
    assert "[[" not in "\n".join(lines[4:])  # every attribute in code stripped


def test_finds_every_instantiation_form():
    defs = {}
    found = gen_kernels.find_kernels("x.metal", SAMPLE, defs)
    found += gen_kernels.find_decltype_instantiations("x.metal", SAMPLE, defs)
    by_host = {h: (call, params, line) for h, call, params, line in found}
    assert set(by_host) == {"k_a", "k_b", "k_c", "plain"}
    assert by_host["k_a"][0] == "k<float, 4>" and by_host["k_b"][0] == "k<half, 8>"
    assert by_host["k_c"][0] == "k<float, 2>"
    assert by_host["k_a"][1] == [
        ("ptr", 0),
        ("ref", 3),
        ("tg", 1),
        ("builtin", "threadgroup_position_in_grid"),
        ("builtin", "thread_index_in_simdgroup"),
    ]
    # unattributed instantiation: the definition's attributes
    assert by_host["k_c"][1] == by_host["k_a"][1]
    assert by_host["plain"][1] == [("ptr", 1), ("builtin", "thread_position_in_grid")]
    plain = next(s for s in SAMPLE.splitlines() if s.startswith("kernel void plain"))
    assert by_host["plain"][2] == SAMPLE.splitlines().index(plain) + 1
