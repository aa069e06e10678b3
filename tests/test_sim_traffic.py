"""The Metal simulator's memory-traffic counting (cpp/metal/sim/README.md, "Memory traffic"):
kernels whose traffic can be worked out by hand (tests/metal_kernels/traffic.metal) give exactly
those figures, a planted uncoalesced read and planted bank conflicts are flagged, and a model's
decode reads about its weights."""

import numpy as np
import pytest

from metal_sim_helpers import core

if not core.sim_counting_available():
    pytest.skip(
        "this build cannot count memory traffic (not GCC, or the ASan build)",
        allow_module_level=True,
    )
if "traffic_copy" not in core.sim_kernels():
    pytest.skip(
        "built without the simulator's test kernels (METALLIC_SIM_TEST_KERNELS=OFF)",
        allow_module_level=True,
    )


@pytest.fixture
def counting():
    """Counting on for one test, from zero; off again afterwards (it slows the simulator)."""
    was = core.sim_counting()
    core.sim_set_counting(True)
    core.sim_reset_traffic()
    yield
    core.sim_set_counting(was)
    core.sim_reset_traffic()


def aligned(a):
    """A copy of a starting on a 128-byte line, as Metal buffers do (NumPy gives 16 or 64 bytes):
    instructions' lines are then counted as on the GPU."""
    raw = np.empty(a.nbytes + 128, dtype=np.uint8)
    off = -raw.ctypes.data % 128
    out = raw[off : off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 128 == 0
    return out


def traffic(kernel, buffers, grid, tg, **kw):
    core.sim_reset_traffic()
    core.sim_dispatch(kernel, buffers, grid, tg, **kw)
    t = core.sim_traffic(per_dispatch=True)
    assert t["dispatches"] == 1 and len(t["per_dispatch"]) == 1
    assert t["per_dispatch"][0]["kernel"] == kernel
    assert t["kernels"][kernel]["loaded_bytes"] == t["loaded_bytes"]  # one kernel: the same
    return t


def test_off_by_default_counts_nothing():
    was = core.sim_counting()
    core.sim_set_counting(False)
    try:
        core.sim_reset_traffic()
        src = np.arange(256, dtype=np.float32)
        core.sim_dispatch("traffic_copy", [src, np.zeros_like(src)], [4], [64])
        assert core.sim_traffic()["dispatches"] == 0
        assert core.sim_traffic()["loaded_bytes"] == 0
    finally:
        core.sim_set_counting(was)


@pytest.mark.parametrize("n", [32, 1024, 4096])
def test_copy_kernel_exact(counting, n):
    src = aligned(np.arange(n, dtype=np.float32))
    dst = aligned(np.zeros_like(src))
    t = traffic("traffic_copy", [src, dst], [n // 64 or 1], [min(n, 64)])
    assert (dst == src).all()
    assert t["loaded_bytes"] == 4 * n and t["stored_bytes"] == 4 * n
    assert t["lane_loads"] == n and t["lane_stores"] == n
    # one 4-byte load and one 4-byte store per simdgroup, each on one 128-byte line
    assert t["load_instructions"] == n // 32 and t["store_instructions"] == n // 32
    assert t["load_widths"] == {1: 0, 2: 0, 4: n // 32, 8: 0, 16: 0}
    assert t["store_widths"][4] == n // 32
    assert t["lines_touched"] == t["lines_min"] == 2 * n // 32
    assert t["unique_bytes"] == 2 * 4 * n  # src and dst, each read or written once
    assert t["active_lane_fraction"] == 1.0
    assert t["tg_instructions"] == 0 and t["bank_conflicts"] == 0 and t["barriers"] == 0
    assert t["threads"] == n


def test_float4_copy_is_one_16_byte_access_per_lane(counting):
    """The CPU compiler may split a float4 copy into scalar accesses; combining puts them back
    together, as the GPU's single 16-byte load per lane."""
    n = 256  # float4s
    src = aligned(np.arange(4 * n, dtype=np.float32))
    dst = aligned(np.zeros_like(src))
    t = traffic("traffic_copy4", [src, dst], [n // 64], [64])
    assert (dst == src).all()
    assert t["loaded_bytes"] == t["stored_bytes"] == 16 * n
    assert t["load_widths"] == {1: 0, 2: 0, 4: 0, 8: 0, 16: n // 32}
    assert t["store_widths"][16] == n // 32
    assert t["lane_loads"] == n
    # 32 lanes x 16 bytes = 512 bytes = 4 lines per instruction, the minimum
    assert t["lines_touched"] == t["lines_min"] == 2 * 4 * n // 32


def test_scalar_accesses_combine_into_the_gpus_vector_loads(counting):
    n = 256
    src = aligned(np.arange(4 * n, dtype=np.float32))
    raw = aligned(np.arange(4 * n, dtype=np.uint8))
    dst = aligned(np.zeros(n, dtype=np.float32))
    t = traffic("traffic_components", [src, raw, dst], [n // 64], [64])
    v, b = src.reshape(n, 4).astype(np.float64), raw.reshape(n, 4).astype(np.float64)
    assert np.allclose(dst, v @ [1, 2, 3, 4] + b @ [1, 2, 4, 8])
    assert t["loaded_bytes"] == 16 * n + 4 * n
    # one 16-byte and one 4-byte load per lane, however the CPU compiler split them
    assert t["lane_loads"] == 2 * n
    assert t["load_widths"] == {1: 0, 2: 0, 4: n // 32, 8: 0, 16: n // 32}
    # 512 + 128 bytes per simdgroup: 4 + 1 lines, the minimum; and 1 line for the store
    assert t["lines_touched"] == t["lines_min"] == 6 * n // 32


def test_uncoalesced_read_is_flagged(counting):
    n = 1024
    src = aligned(np.arange(32 * n, dtype=np.float32))
    dst = aligned(np.zeros(n, dtype=np.float32))
    t = traffic("traffic_strided", [src, dst], [n // 64], [64])
    assert (dst == src[::32]).all()
    assert t["loaded_bytes"] == 4 * n  # the lanes' bytes are the copy's ...
    assert t["load_instructions"] == n // 32
    # ... but each load touches 32 lines where 1 would do; the stores are coalesced
    loads_touched = t["lines_touched"] - n // 32
    assert loads_touched == 32 * (n // 32)
    assert t["lines_min"] == 2 * n // 32
    assert t["unique_bytes"] == 128 * n + 4 * n


def test_inactive_lanes(counting):
    n = 256
    src = aligned(np.ones(n, dtype=np.float32))
    dst = aligned(np.zeros(n // 32, dtype=np.float32))
    t = traffic("traffic_lane0", [src, dst], [n // 64], [64])
    assert (dst == 32).all()
    sgs = n // 32
    assert t["store_instructions"] == sgs and t["stored_bytes"] == 4 * sgs
    assert t["lane_slots"] == 32 * 2 * sgs  # a load and a store per simdgroup
    assert t["active_lanes"] == (32 + 1) * sgs
    assert t["active_lane_fraction"] == pytest.approx(33 / 64)
    assert t["simd_collectives"] == sgs


@pytest.mark.parametrize("stride, extra", [(1, 0), (2, 1), (32, 31)])
def test_bank_conflicts(counting, stride, extra):
    groups, threads = 3, 64
    out = np.zeros(groups * threads, dtype=np.float32)
    t = traffic("traffic_banks", [np.array([stride], dtype=np.uint32), out], [groups], [threads])
    assert (out == np.tile(np.arange(threads), groups)).all()
    sgs = groups * threads // 32
    assert t["tg_instructions"] == 2 * sgs  # a store and a load per simdgroup
    assert t["tg_loaded_bytes"] == t["tg_stored_bytes"] == 4 * groups * threads
    assert t["bank_conflicts"] == 2 * sgs * extra
    assert t["barriers"] == groups
    # the stride comes from the constant address space: not device traffic
    assert t["loaded_bytes"] == 0 and t["constant_bytes"] >= 4 * groups * threads
    assert t["stored_bytes"] == 4 * groups * threads


def test_counts_accumulate_per_kernel(counting):
    src = np.arange(1024, dtype=np.float32)
    for _ in range(3):
        core.sim_dispatch("traffic_copy", [src, np.zeros_like(src)], [16], [64])
    core.sim_dispatch("traffic_copy4", [src, np.zeros_like(src)], [4], [64])
    t = core.sim_traffic()
    assert t["dispatches"] == 4
    assert t["kernels"]["traffic_copy"]["dispatches"] == 3
    assert t["kernels"]["traffic_copy"]["loaded_bytes"] == 3 * 4096
    assert t["kernels"]["traffic_copy4"]["loaded_bytes"] == 4096
    assert t["loaded_bytes"] == 4 * 4096
    core.sim_reset_traffic()
    assert core.sim_traffic()["loaded_bytes"] == 0 and core.sim_traffic()["kernels"] == {}


def test_model_decode_reads_about_its_weights(counting):
    """A decode step on metal-sim: the matvec kernels' distinct lines of device memory
    (unique_bytes, the DRAM estimate) come to about the weights the host declares, while the
    lanes' loaded bytes are several times that: each simdgroup reads the whole input vector x
    again, from the caches on a GPU. Measured (tiny qwen2 Q8_0 here; the Qwen2.5-0.5B-shape
    Q8_0 benchmark model in docs/metal.md): unique / declared about 1.06 here, 1.005 there;
    loaded / declared about 2.6 here, 3.0 there."""
    import metallic
    from oracle.tiny_models import tiny_gguf

    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    m = metallic.load(str(path), backend="metal-sim", n_ctx=32)
    m.decode(1)
    m.reset_gpu_stats()
    assert core.sim_traffic()["dispatches"] == 0  # reset_gpu_stats resets the traffic too
    m.decode(2)
    s = m.gpu_stats()
    kernels = s["kernels"]
    assert sum(k["dispatches"] for k in kernels.values()) == s["dispatches"]
    mv = [k for name, k in kernels.items() if name.startswith("matvec")]
    unique = sum(k["unique_bytes"] for k in mv)
    loaded = sum(k["loaded_bytes"] for k in mv)
    declared = s["declared_weight_bytes"] - kernels["embed_q8_0"]["loaded_bytes"]
    ratio_u, ratio_l = unique / declared, loaded / declared
    print(f"matvec unique / declared {ratio_u:.3f}, loaded / declared {ratio_l:.2f}")
    assert 1.0 <= ratio_u <= 1.2, ratio_u  # every weight line once, plus x and out
    assert ratio_l >= ratio_u
    assert s["loaded_bytes"] == sum(k["loaded_bytes"] for k in kernels.values())
    assert 0 < s["active_lane_fraction"] <= 1 and s["lines_touched"] >= s["lines_min"] > 0


def test_gpu_stats_measured_keys_only_while_counting():
    import metallic
    from oracle.tiny_models import tiny_gguf

    path = tiny_gguf("qwen2", "Q8_0", "gqa2-untied")[0]
    m = metallic.load(str(path), backend="metal-sim", n_ctx=32)
    was = core.sim_counting()
    core.sim_set_counting(False)
    try:
        m.decode(1)
        s = m.gpu_stats()
        assert "declared_weight_bytes" in s and "weight_bytes" not in s
        assert "loaded_bytes" not in s and "kernels" not in s
        core.sim_set_counting(True)
        m.decode(2)
        s = m.gpu_stats()
        assert s["loaded_bytes"] > 0 and "matvec_q8_0" in s["kernels"]
    finally:
        core.sim_set_counting(was)
        core.sim_reset_traffic()
