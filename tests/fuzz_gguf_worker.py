"""Fuzz worker (run by test_fuzz_gguf.py in a subprocess, so a crash or a hang shows up as a
failed test rather than taking pytest down): mutates bytes of a valid GGUF header many times
and loads each result through the whole stack. The only acceptable outcomes are a successful
load or a MetallicError."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import metallic
from metallic.gguf_file import read_gguf


def main() -> int:
    src, work, seed, rounds = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    data = src.read_bytes()
    header_end = read_gguf(src).data_offset
    rng = np.random.default_rng(seed)
    outcomes = {"loaded": 0, "rejected": 0}
    for i in range(rounds):
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 8))):
            pos = int(rng.integers(0, header_end))
            kind = rng.integers(0, 3)
            if kind == 0:
                buf[pos] = int(rng.integers(0, 256))  # random byte
            elif kind == 1:
                buf[pos] ^= 1 << int(rng.integers(0, 8))  # bit flip
            else:
                buf[pos : pos + 8] = int(rng.integers(0, 2**63)).to_bytes(8, "little")
        if rng.random() < 0.2:
            buf = buf[: int(rng.integers(0, len(buf)))]  # and sometimes truncate
        work.write_bytes(bytes(buf))
        print(f"round {i}", file=sys.stderr, flush=True)  # the parent shows the last one on failure
        try:
            m = metallic.load(work, n_ctx=8, threads=1)
            m.prefill([0, 1])
            outcomes["loaded"] += 1
        except metallic.MetallicError:
            outcomes["rejected"] += 1
    print(json.dumps(outcomes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
