"""Next-token parity of the engine with llama.cpp on a real GGUF model (used by
test_real_models.py, and runnable as a script to print the numbers)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import metallic

PROMPTS = [
    "The history of the Roman Empire spans more than a thousand years, from the founding of "
    "the city to the fall of Constantinople. Historians usually divide it into",
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n'
    "        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\ndef main():\n",
    "Photosynthesis is the process by which green plants and some other organisms use "
    "sunlight to synthesize foods from carbon dioxide and water. In plants, it",
    "Ingredients: 2 cups of flour, 1 cup of sugar, 3 eggs, a pinch of salt. Step 1: Preheat "
    "the oven to 180 degrees. Step 2:",
    "Q: What is the tallest mountain on Earth?\nA: Mount Everest, at 8,849 metres.\n"
    "Q: What is the longest river in the world?\nA:",
    "Les grandes villes de France sont Paris, Lyon, Marseille et Toulouse. La capitale,",
]


@dataclass
class Parity:
    mean_kl: float
    top1: float
    greedy_identical: int
    greedy_total: int


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def measure(path: Path, positions: int = 64, greedy: int = 32) -> Parity:
    import llama_cpp

    ours = metallic.load(path, n_ctx=positions + greedy + 8)
    peer = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=positions + greedy + 8,
        logits_all=True,
        verbose=False,
        n_threads=2,
    )
    kls, agree, identical = [], [], 0
    for text in PROMPTS:
        ids = ours.tokenize(text)[:positions]
        ours.reset()
        got = ours.prefill_all(ids)
        peer.reset()
        peer.eval(ids)
        want = np.array(peer.scores[: len(ids)], dtype=np.float32)
        lp, lq = log_softmax(want), log_softmax(got)
        kls.extend((np.exp(lp) * (lp - lq)).sum(-1))
        agree.extend(got.argmax(-1) == want.argmax(-1))
        # greedy continuations from the same prompt
        mine = [t.id for t in ours.generate(ids, greedy, temperature=0, stop_ids=[]) if t.id >= 0]
        theirs = []
        for _ in range(greedy):
            tok = int(np.argmax(peer.scores[peer.n_tokens - 1]))
            theirs.append(tok)
            peer.eval([tok])
        identical += mine == theirs
    return Parity(float(np.mean(kls)), float(np.mean(agree)), identical, len(PROMPTS))


if __name__ == "__main__":
    print(measure(Path(sys.argv[1])))
