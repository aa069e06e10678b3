"""The command line's shared pieces: argument types that reject bad values at parse time with
a message naming the flag, and the option groups several commands take."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from .model import BACKENDS
from .models import DEFAULT_MODEL, KNOWN_MODELS
from .sampling import ADDITIVE_PENALTY_RANGE, REPEAT_PENALTY_RANGE
from .system import logical_cpus

# -- argument types: reject bad values at parse time with a message naming the flag -----------


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {v}")
        return v

    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"must be in {left}{lo}, {hi}], got {text}")
        return v

    return parse


def threads_arg(text: str) -> int:
    # More threads than CPUs only queue behind each other (decode gets hundreds of times slower).
    cpus = logical_cpus()
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= v <= cpus:
        raise argparse.ArgumentTypeError(
            f"must be from 1 to {cpus} (the logical CPUs of this machine), got {v}"
        )
    return v


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def escaped_text(text: str) -> str:
    """Text with the escapes \\n, \\t, \\r and \\\\ turned into the characters, as llama.cpp
    does, so that `--stop "\\n"` means a newline in every shell."""
    out = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    if not out:
        raise argparse.ArgumentTypeError("must not be empty")
    return "".join(out)


def token_ids_arg(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like '1,2,3', got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("no token ids given")
    return ids


# -- shared option groups ---------------------------------------------------------------------


def add_model_options(
    p: argparse.ArgumentParser,
    default_model: str = DEFAULT_MODEL,
    *,
    context: bool = True,
    profile: bool = True,
) -> argparse._ArgumentGroup:
    """The "model" group: -m, --backend, -t, --kv-dtype, and unless turned off -c/--n-ctx (serve
    sizes its slots' contexts itself) and --profile. Returns the group for a command's own."""
    g = p.add_argument_group("model")
    g.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="PATH|NAME",
        help="a GGUF file, a model name (see `list`: "
        f"{', '.join(KNOWN_MODELS)}), or a Hugging Face id hf:OWNER/REPO[:QUANT] "
        f"(default: {default_model})",
    )
    g.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="compute backend (default: $METALLIC_BACKEND or auto: Metal if present, else CPU)",
    )
    if context:
        g.add_argument(
            "-c",
            "--n-ctx",
            type=int_in(1, 1 << 20),
            default=None,
            metavar="N",
            help="context length in tokens (default: the model's, at most 4096)",
        )
    g.add_argument(
        "-t",
        "--threads",
        type=threads_arg,
        default=None,
        metavar="N",
        help="CPU threads, at most the logical CPUs (default: physical cores)",
    )
    if profile:
        g.add_argument(
            "--profile",
            action="store_true",
            default=None,
            help="print the time of every op per token at the end (also: "
            "METALLIC_ENABLE_PROFILING=1 or METALLIC_PROFILE=1)",
        )
    g.add_argument(
        "--kv-dtype",
        choices=["f16", "f32"],
        default=None,
        help="KV cache precision (default: f32 for F32 models, else f16)",
    )
    return g


def add_sampling_options(p: argparse.ArgumentParser) -> None:
    rlo, rhi = REPEAT_PENALTY_RANGE
    alo, ahi = ADDITIVE_PENALTY_RANGE
    g = p.add_argument_group(
        "sampling (applied in this order: penalties, top-k, top-p, min-p, temperature)"
    )
    g.add_argument(
        "--temp",
        "--temperature",
        dest="temperature",
        type=float_in(0, 100),
        default=0.8,
        metavar="T",
        help="temperature; 0 is greedy (default 0.8)",
    )
    g.add_argument(
        "--top-k",
        type=int_in(0),
        default=40,
        metavar="K",
        help="keep the K most likely tokens; 0 disables (default 40)",
    )
    g.add_argument(
        "--top-p",
        type=float_in(0, 1, lo_open=True),
        default=0.95,
        metavar="P",
        help="keep the smallest set with cumulative probability P; 1 disables (default 0.95)",
    )
    g.add_argument(
        "--min-p",
        type=float_in(0, 1),
        default=0.05,
        metavar="P",
        help="drop tokens below P times the top probability; 0 disables (default 0.05)",
    )
    g.add_argument(
        "--repeat-penalty",
        type=float_in(*REPEAT_PENALTY_RANGE),
        default=1.0,
        metavar="X",
        help=f"divide logits of recent tokens by X ({rlo:g} to {rhi:g}); 1 disables (default 1)",
    )
    g.add_argument(
        "--presence-penalty",
        type=float_in(*ADDITIVE_PENALTY_RANGE),
        default=0.0,
        metavar="X",
        help=f"subtract X from logits of recent tokens ({alo:g} to {ahi:g}; default 0)",
    )
    g.add_argument(
        "--frequency-penalty",
        type=float_in(*ADDITIVE_PENALTY_RANGE),
        default=0.0,
        metavar="X",
        help=f"subtract X per occurrence of recent tokens ({alo:g} to {ahi:g}; default 0)",
    )
    g.add_argument(
        "--penalty-last-n",
        type=int_in(-1),
        default=64,
        metavar="N",
        help="how many recent tokens the penalties see; -1 all, 0 none (default 64)",
    )
    g.add_argument(
        "-s",
        "--seed",
        type=int_in(0, 2**63 - 1),
        default=None,
        help="random seed for reproducible sampling (default: random)",
    )


def add_chat_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chat formatting")
    g.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    g.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME|FILE|JINJA",
        help="override the model's chat template: a built-in name, a file, or Jinja text",
    )


def sampler_settings(args: argparse.Namespace) -> Any:
    from .sampling import SamplerSettings

    return SamplerSettings(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        penalty_last_n=args.penalty_last_n,
        seed=args.seed,
    )


def add_instrument_options(p: argparse.ArgumentParser) -> None:
    """The instrumentation's environment variables as flags (docs/inference-path.md)."""
    from .instrument import parse_level

    def level(text: str) -> str:
        try:
            parse_level(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected DEBUG, INFO, WARNING, ERROR or a number, got {text!r}"
            ) from None
        return text

    g = p.add_argument_group("instrumentation (also by environment: docs/inference-path.md)")
    g.add_argument(
        "--log-level",
        type=level,
        default=None,
        metavar="LEVEL",
        help="level of the metallic logger, to stderr (also: METALLIC_LOG_LEVEL)",
    )
    g.add_argument(
        "--metrics-jsonl",
        default=None,
        metavar="PATH",
        help="append a JSON line per generated token and per request to PATH (also: "
        "METALLIC_METRICS_JSONL_PATH)",
    )
    g.add_argument(
        "--metrics-console",
        action="store_true",
        default=None,
        help="a live status line on stderr: tokens, tok/s, cache, memory (also: "
        "METALLIC_METRICS_CONSOLE=1)",
    )


def apply_instrument_options(args: argparse.Namespace) -> None:
    """The flags of add_instrument_options over the environment's settings."""
    import os

    from . import instrument

    flags = {
        instrument.ENV_LOG_LEVEL: getattr(args, "log_level", None),
        instrument.ENV_JSONL: getattr(args, "metrics_jsonl", None),
        instrument.ENV_CONSOLE: "1" if getattr(args, "metrics_console", None) else None,
    }
    if any(v is not None for v in flags.values()):
        env = dict(os.environ)
        env.update({k: v for k, v in flags.items() if v is not None})
        instrument.configure(env)
