"""Prompts and helpers for comparing next-token distributions on real models
(test_real_models.py)."""

from __future__ import annotations

import numpy as np

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


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
