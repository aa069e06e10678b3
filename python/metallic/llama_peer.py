"""llama.cpp (llama-cpp-python) as the peer of benchmarks and the oracle of tests: the model
parameters every place that loads it uses.

On CPUs with AMX (Intel Sapphire Rapids and later), llama-cpp-python 0.3.36's ggml puts the
weights of Q8_0, Q4_0/Q4_1 and K-quant models into its AMX buffer type and then crashes in
ggml_backend_amx_mul_mat (SIGSEGV at the first llama_decode; seen on the Xeon machines here,
2026-12, with tiny test models and with SmolLM2 and Gemma 3). Loading with use_extra_bufts off
keeps the weights in ordinary CPU buffers, where llama.cpp runs its AVX-512/AVX2 kernels. It is
turned off only on AMX CPUs: elsewhere the peer keeps its weight repacking, as its users get it.
"""

from __future__ import annotations

import runpy
import sys
from collections.abc import Callable
from typing import Any

from .system import cpu_flags


def cpu_has_amx() -> bool:
    """Whether the CPU advertises AMX tiles (Linux; elsewhere False)."""
    return "amx_tile" in cpu_flags()


def _without_amx(p: Any) -> Any:
    if cpu_has_amx() and any(name == "use_extra_bufts" for name, *_ in type(p)._fields_):
        p.use_extra_bufts = False
    return p


def model_params(L: Any) -> Any:  # noqa: N803 - the llama_cpp module, as llama-cpp-python names it
    """llama_model_default_params(), without the extra buffer types on AMX CPUs."""
    return _without_amx(L.llama_model_default_params())


def _use_safe_defaults(L: Any) -> Callable[[], None]:  # noqa: N803
    """Makes llama_cpp.Llama take model_params' defaults (it reads them from the ctypes module
    llama_cpp.llama_cpp); returns what undoes it."""
    low = L.llama_cpp
    original = low.llama_model_default_params
    low.llama_model_default_params = lambda: _without_amx(original())

    def restore() -> None:
        low.llama_model_default_params = original

    return restore


def load(L: Any, **kwargs: Any) -> Any:  # noqa: N803
    """llama_cpp.Llama(**kwargs) with model_params' defaults (the swap lasts while it loads;
    one thread)."""
    restore = _use_safe_defaults(L)
    try:
        return L.Llama(**kwargs)
    finally:
        restore()


if __name__ == "__main__":
    # python -m metallic.llama_peer ARGS: llama-cpp-python's OpenAI server (llama_cpp.server,
    # the bench extra) with these defaults, for benchmarks/bench_server.py.
    import llama_cpp

    _use_safe_defaults(llama_cpp)
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
