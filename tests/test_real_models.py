"""Real quantized models (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M Q4_K_M) against llama.cpp
and against the exact float32 model.

Two references:
- llama.cpp (llama-cpp-python) on the same file: next-token distributions agree (mean KL under
  0.01 over every prompt position), top-1 agreement is high, greedy tokens and continuations
  agree except at near-ties (NEAR_TIE).
- transformers loading the same GGUF dequantized to float32: the model the file truly encodes.
  llama.cpp quantizes activations to int8 for its integer dot products and sits about 0.003
  nats of KL from this model. Our prefill multiplies float activations by exactly dequantized
  weights (KL ~0); our decode uses integer dot products too. The tests require ours to be no
  further from this model than llama.cpp, for prompts and for decode steps. It also explains
  the top-1 bar below: each engine alone matches the float32 model's top token only 96-99% of
  the time, so two engines with independent rounding cannot be required to agree with each
  other 98% of the time.

Matching llama.cpp's rounding instead was tried and measured: with its activation encodings
(block_q8_0 scales rounded to half, block_q8_1 sums, int8 activations for Q8_0) and its
attention roundings (F16 queries, F16 probabilities) SmolLM2's logits came out bit-identical
for the first two positions and no closer than before from the third on. Int8 activation
codes amplify any one-ulp difference (a sum in another order, another exp): the flipped code
moves its block by 1/254 of its range, which flips codes in the next layer, and so on. Two
engines agree token for token only if every op rounds identically, including llama.cpp's
build-specific reduction orders, so the tests bound each engine's distance to the model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import metallic  # noqa: E402
from metallic import llama_peer  # noqa: E402
from paths import cache_dir  # noqa: E402
from real_models import gemma3_gguf, smollm2_gguf  # noqa: E402
from real_parity import PROMPTS, log_softmax  # noqa: E402

pytestmark = pytest.mark.slow
POSITIONS = 64
GREEDY = 32
# A near-tie, in logits: where llama.cpp's top two are closer than this, our greedy token may be
# the other one. Measured on both models (6 prompts x 32 steps each): the two engines' margins
# between llama.cpp's top two differ by up to 0.55 (99th percentile 0.46); the greedy tokens
# differed at margins 0.003 to 0.35 only (11 steps). 38% of the steps have margins under 1.0.
NEAR_TIE = 1.0

MODELS = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request: pytest.FixtureRequest) -> tuple[Path, metallic.model.Model, object]:
    path = MODELS[request.param]()
    ours = metallic.load(path, n_ctx=POSITIONS + GREEDY + 8)
    peer = llama_peer.load(
        llama_cpp,
        model_path=str(path),
        n_ctx=POSITIONS + GREEDY + 8,
        logits_all=True,
        verbose=False,
        n_threads=2,
    )
    return path, ours, peer


def prompt_ids(model: metallic.model.Model) -> list[list[int]]:
    return [model.tokenize(t)[:POSITIONS] for t in PROMPTS]


def float32_reference(path: Path, prompts: list[list[int]]) -> list[np.ndarray]:
    """Logits of the GGUF dequantized to float32 by transformers, cached on disk (loading
    dequantizes every tensor in Python, about a minute)."""
    key = hashlib.sha256(repr((path.name, path.stat().st_size, prompts)).encode()).hexdigest()[:16]
    cached = cache_dir() / f"f32-reference-{path.stem}-{key}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return [z[f"p{i}"] for i in range(len(prompts))]
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    ).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            out.append(model(torch.tensor([ids])).logits[0].float().numpy())
    np.savez(cached, **{f"p{i}": x for i, x in enumerate(out)})
    return out


@pytest.fixture(scope="module")
def continuations(case) -> list[tuple[list[int], list[int], np.ndarray]]:  # noqa: ANN001
    """Per prompt: its ids, llama.cpp's greedy continuation and llama.cpp's logits before each
    continuation token."""
    _, ours, peer = case
    out = []
    for ids in prompt_ids(ours):
        peer.reset()
        peer.eval(ids)
        theirs, their_logits = [], []
        for _ in range(GREEDY):
            logits = np.array(peer.scores[peer.n_tokens - 1], dtype=np.float32)
            their_logits.append(logits)
            theirs.append(int(np.argmax(logits)))
            peer.eval([theirs[-1]])
        out.append((ids, theirs, np.stack(their_logits)))
    return out


@pytest.fixture(scope="module")
def references(case, continuations) -> list[np.ndarray]:  # noqa: ANN001
    """The float32 model's logits over each prompt followed by llama.cpp's continuation: the
    first len(prompt) rows are the prompt's, the rest the decode steps' (one model load)."""
    path = case[0]
    return float32_reference(path, [ids + theirs[:-1] for ids, theirs, _ in continuations])


def test_next_token_distribution_matches_llama_cpp(case) -> None:  # noqa: ANN001
    path, ours, peer = case
    kls, agree = [], []
    for ids in prompt_ids(ours):
        ours.reset()
        got = ours.prefill_all(ids)
        peer.reset()
        peer.eval(ids)
        want = np.array(peer.scores[: len(ids)], dtype=np.float32)
        kls.extend(kl(want, got))
        agree.extend(got.argmax(-1) == want.argmax(-1))
    print(
        f"\n{path.name}: mean KL {np.mean(kls):.4f}, top-1 agreement {np.mean(agree):.3f} "
        f"over {len(kls)} positions"
    )
    assert np.mean(kls) < 0.01
    assert np.mean(agree) >= 0.95


def test_as_close_to_the_float32_model_as_llama_cpp(case, references) -> None:  # noqa: ANN001
    path, ours, peer = case
    prompts = prompt_ids(ours)
    ours_kl, peer_kl = [], []
    for ids, full in zip(prompts, references, strict=True):
        ref = full[: len(ids)]
        ours.reset()
        ours_kl.extend(kl(ref, ours.prefill_all(ids)))
        peer.reset()
        peer.eval(ids)
        peer_kl.extend(kl(ref, np.array(peer.scores[: len(ids)], dtype=np.float32)))
    print(
        f"\n{path.name}: KL to float32 model: ours {np.mean(ours_kl):.5f}, "
        f"llama.cpp {np.mean(peer_kl):.5f}"
    )
    assert np.mean(ours_kl) <= 1.1 * np.mean(peer_kl)
    assert np.mean(ours_kl) < 0.01


def test_decode_steps_and_greedy_continuations(case, continuations, references) -> None:  # noqa: ANN001
    """The decode path on real models: llama.cpp's greedy continuation fed through our decode
    step by step (teacher forcing), distributions compared at every step with llama.cpp's and
    with the float32 model's. Greedy choices must agree wherever llama.cpp's top two logits are
    NEAR_TIE or more apart, in the teacher-forced steps and in our free-running continuation,
    which must equal llama.cpp's until a position where they are closer (where each engine's
    activation rounding decides, and the contexts part ways)."""
    path, ours, _ = case
    kls, agree, identical, common = [], [], 0, []
    ours_kl, peer_kl, ours_top, peer_top = [], [], [], []
    confident_flips, confident_partings = [], []
    for p, ((ids, theirs, want), full) in enumerate(zip(continuations, references, strict=True)):
        ours.reset()
        mine_logits = [ours.prefill(ids).copy()]
        for tok in theirs[:-1]:
            mine_logits.append(ours.decode(tok).copy())
        got, ref = np.stack(mine_logits), full[len(ids) - 1 :]
        kls.extend(kl(want, got))
        agree.extend(got.argmax(-1) == want.argmax(-1))
        ours_kl.extend(kl(ref, got))
        peer_kl.extend(kl(ref, want))
        ours_top.extend(got.argmax(-1) == ref.argmax(-1))
        peer_top.extend(want.argmax(-1) == ref.argmax(-1))
        top2 = np.sort(want, axis=-1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]  # llama.cpp's, on the same context as ours
        confident_flips += [
            (p, i, round(float(margin[i]), 3))
            for i in range(GREEDY)
            if got[i].argmax() != theirs[i] and margin[i] >= NEAR_TIE
        ]
        # From an empty cache: a cache hit would re-run the last prompt token as a decode step
        # (integer dot products, not prefill's float ones) and part ways at other near-ties.
        ours.reset()
        mine = [t.id for t in ours.generate(ids, GREEDY, temperature=0, stop_ids=[]) if t.id >= 0]
        assert len(mine) == GREEDY
        identical += mine == theirs
        parted = next((i for i in range(GREEDY) if mine[i] != theirs[i]), GREEDY)
        common.append(parted)
        if parted < GREEDY and margin[parted] >= NEAR_TIE:
            confident_partings.append((p, parted, round(float(margin[parted]), 3)))
    print(
        f"\n{path.name}: decode steps vs llama.cpp: mean KL {np.mean(kls):.4f}, "
        f"top-1 {np.mean(agree):.3f}; vs the float32 model: KL ours {np.mean(ours_kl):.5f}, "
        f"llama.cpp {np.mean(peer_kl):.5f}, top-1 ours {np.mean(ours_top):.3f}, llama.cpp "
        f"{np.mean(peer_top):.3f}; greedy {GREEDY}-token continuations identical for "
        f"{identical} of {len(PROMPTS)}, common prefixes {common}"
    )
    assert np.mean(kls) < 0.01
    assert np.mean(ours_kl) <= 1.1 * np.mean(peer_kl)
    # Each engine's top token matches the float32 model's 96-99% of the time here; two
    # independent roundings agree with each other less often than either with the model.
    assert np.mean(agree) >= 0.93
    assert np.mean(ours_top) >= np.mean(peer_top) - 0.02
    # (prompt, step, llama.cpp's top-2 margin) where the greedy tokens differ though llama.cpp's
    # top two are NEAR_TIE apart: teacher-forced, then where the free-running ones part.
    assert not confident_flips, confident_flips
    assert not confident_partings, (confident_partings, common)


def test_chat_reuses_the_reply() -> None:
    """A second chat turn runs only its new tokens: the first prompt and the reply, which a
    real model writes as text that re-tokenizes the same, stay in the cache."""
    from metallic.chat import chat_prompt_ids

    m = metallic.load(smollm2_gguf(), n_ctx=512)
    messages = [{"role": "user", "content": "Name three colours."}]
    first = chat_prompt_ids(m, messages, None)
    reply = "".join(t.text for t in m.generate(first, 24, temperature=0))
    messages += [
        {"role": "assistant", "content": reply.strip()},
        {"role": "user", "content": "And three animals?"},
    ]
    second = chat_prompt_ids(m, messages, None)
    list(m.generate(second, 4, temperature=0))
    new_tokens = m.last_stats.prompt_tokens - m.last_stats.cached_tokens
    assert m.last_stats.cached_tokens >= len(first) + 10, m.last_stats
    assert new_tokens < 25, m.last_stats
