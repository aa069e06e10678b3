"""`python -m metallic ...`: generate, chat, inspect, tokenize.

Output goes to stdout (generated text, JSON); progress, timings and errors to stderr, so the
text can be piped. Every error is one line on stderr (a traceback only with --debug). Exit
status: 0 success, 1 error, 2 bad command line, 130 interrupted (Ctrl-C), 141 when the reader of
stdout went away (`| head`), as for a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import InternalError, MetallicError, RequestError
from .models import DEFAULT_MODEL, KNOWN_MODELS, check_model_file, resolve_model
from .sampling import ADDITIVE_PENALTY_RANGE, REPEAT_PENALTY_RANGE

# -- argument types: reject bad values at parse time with a message naming the flag -----------


def _int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
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


def _float_in(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
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


def _logical_cpus() -> int:
    # The CPUs this process may run on: its affinity mask where the OS has one.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _threads(text: str) -> int:
    # More threads than CPUs only queue behind each other (decode gets hundreds of times slower).
    cpus = _logical_cpus()
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 1 <= v <= cpus:
        raise argparse.ArgumentTypeError(
            f"must be from 1 to {cpus} (the logical CPUs of this machine), got {v}"
        )
    return v


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids like '1,2,3', got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("no token ids given")
    return ids


# -- shared option groups ---------------------------------------------------------------------


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="PATH|NAME",
        help="GGUF model file, or a packaged model name: "
        f"{', '.join(KNOWN_MODELS)} (default: {DEFAULT_MODEL})",
    )
    g.add_argument(
        "--backend",
        choices=["auto", "cpu", "metal", "metal-sim"],
        default=None,
        help="compute backend (default: $METALLIC_BACKEND or auto: Metal if present, else CPU)",
    )
    g.add_argument(
        "-c",
        "--n-ctx",
        type=_int_in(1, 1 << 20),
        default=None,
        metavar="N",
        help="context length in tokens (default: the model's, at most 4096)",
    )
    g.add_argument(
        "-t",
        "--threads",
        type=_threads,
        default=None,
        metavar="N",
        help="CPU threads, at most the logical CPUs (default: physical cores)",
    )
    g.add_argument(
        "--profile",
        action="store_true",
        default=None,
        help="print the time of every op per token at the end (also: METALLIC_PROFILE=1)",
    )
    g.add_argument(
        "--kv-dtype",
        choices=["f16", "f32"],
        default=None,
        help="KV cache precision (default: f32 for F32 models, else f16)",
    )


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    rlo, rhi = REPEAT_PENALTY_RANGE
    alo, ahi = ADDITIVE_PENALTY_RANGE
    g = p.add_argument_group(
        "sampling (applied in this order: penalties, top-k, top-p, min-p, temperature)"
    )
    g.add_argument(
        "--temp",
        "--temperature",
        dest="temperature",
        type=_float_in(0, 100),
        default=0.8,
        metavar="T",
        help="temperature; 0 is greedy (default 0.8)",
    )
    g.add_argument(
        "--top-k",
        type=_int_in(0),
        default=40,
        metavar="K",
        help="keep the K most likely tokens; 0 disables (default 40)",
    )
    g.add_argument(
        "--top-p",
        type=_float_in(0, 1, lo_open=True),
        default=0.95,
        metavar="P",
        help="keep the smallest set with cumulative probability P; 1 disables (default 0.95)",
    )
    g.add_argument(
        "--min-p",
        type=_float_in(0, 1),
        default=0.05,
        metavar="P",
        help="drop tokens below P times the top probability; 0 disables (default 0.05)",
    )
    g.add_argument(
        "--repeat-penalty",
        type=_float_in(*REPEAT_PENALTY_RANGE),
        default=1.0,
        metavar="X",
        help=f"divide logits of recent tokens by X ({rlo:g} to {rhi:g}); 1 disables (default 1)",
    )
    g.add_argument(
        "--presence-penalty",
        type=_float_in(*ADDITIVE_PENALTY_RANGE),
        default=0.0,
        metavar="X",
        help=f"subtract X from logits of recent tokens ({alo:g} to {ahi:g}; default 0)",
    )
    g.add_argument(
        "--frequency-penalty",
        type=_float_in(*ADDITIVE_PENALTY_RANGE),
        default=0.0,
        metavar="X",
        help=f"subtract X per occurrence of recent tokens ({alo:g} to {ahi:g}; default 0)",
    )
    g.add_argument(
        "--penalty-last-n",
        type=_int_in(-1),
        default=64,
        metavar="N",
        help="how many recent tokens the penalties see; -1 all, 0 none (default 64)",
    )
    g.add_argument(
        "-s",
        "--seed",
        type=_int_in(0, 2**63 - 1),
        default=None,
        help="random seed for reproducible sampling (default: random)",
    )


def _add_chat_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("chat formatting")
    g.add_argument("--system", default=None, metavar="TEXT", help="system prompt")
    g.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME|FILE|JINJA",
        help="override the model's chat template: a built-in name, a file, or Jinja text",
    )


def _sampler_settings(args: argparse.Namespace) -> Any:
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


def _load(args: argparse.Namespace) -> Any:
    from .model import load

    path = resolve_model(args.model)  # may assemble the packaged default model first
    t0 = time.perf_counter()
    print(f"loading {path} ...", file=sys.stderr, flush=True)
    model = load(
        path,
        backend=args.backend,
        n_ctx=args.n_ctx,
        threads=args.threads,
        kv_dtype=args.kv_dtype,
        profile=args.profile,
    )
    cfg = model.config
    print(
        f"loaded {cfg.arch} ({cfg.n_layer} layers, {cfg.n_embd} wide, vocab {cfg.n_vocab}) on "
        f"{model.backend} with {model.threads} threads, n_ctx {model.n_ctx}, in "
        f"{time.perf_counter() - t0:.2f} s",
        file=sys.stderr,
        flush=True,
    )
    return model


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _print_stats(stats: Any) -> None:
    print(
        f"\nprompt: {stats.prompt_tokens} tokens ({stats.cached_tokens} cached) at "
        f"{stats.prompt_tps:.1f} tok/s | decode: {stats.generated_tokens} tokens at "
        f"{stats.decode_tps:.1f} tok/s | stop: {stats.stop_reason} | peak memory: "
        f"{peak_rss_bytes() / 2**20:.0f} MiB",
        file=sys.stderr,
        flush=True,
    )


def print_profile(stats: Any) -> None:
    """Per-op time tables: the prompt as a whole, and the decode steps per token."""
    steps = max(stats.generated_tokens - 1, 1)
    for title, table, per in (
        (f"prompt ({stats.prompt_tokens - stats.cached_tokens} tokens)", stats.profile_prompt, 1),
        (f"decode (per token, {steps} tokens)", stats.profile_decode, steps),
    ):
        if not table:
            continue
        total = sum(sec for _, sec in table.values())
        print(f"\nprofile: {title}", file=sys.stderr)
        print(f"  {'op':<44} {'calls':>7} {'ms':>9} {'share':>6}", file=sys.stderr)
        for op, (calls, sec) in sorted(table.items(), key=lambda kv: -kv[1][1]):
            print(
                f"  {op:<44} {calls / per:>7.1f} {1e3 * sec / per:>9.3f} {sec / total:>6.1%}",
                file=sys.stderr,
            )
        print(f"  {'engine ops total':<44} {'':>7} {1e3 * total / per:>9.3f}", file=sys.stderr)
    if stats.profile_decode:
        other = stats.decode_seconds - stats.engine_seconds - stats.sample_seconds
        print(
            f"  {'sampling':<44} {'':>7} {1e3 * stats.sample_seconds / steps:>9.3f}",
            file=sys.stderr,
        )
        print(
            f"  {'python (detokenize, stop strings, loop)':<44} {'':>7} "
            f"{1e3 * other / steps:>9.3f}",
            file=sys.stderr,
        )


def chat_prompt_ids(model: Any, messages: list[dict[str, str]], template: str | None) -> list[int]:
    """Renders the conversation with the chat template and tokenizes it, adding BOS only when
    the model wants one and the template did not already write it."""
    from .chat_template import RenderBudget, choose_template, render_chat
    from .generate import encode_prompt, prompt_byte_limit

    tok = model.tokenizer
    source, origin = choose_template(model.metadata, template, model_path=model.path)
    bos = tok.id_to_token(tok.bos_id) if tok.bos_id is not None else ""
    eos = tok.id_to_token(tok.eos_id) if tok.eos_id is not None else ""
    # Rendering more characters than the context can hold bytes would only be refused after.
    budget = RenderBudget()
    limit = prompt_byte_limit(tok, model.n_ctx)
    if limit < budget.max_output:
        note = f"more than a context of {model.n_ctx:,} tokens can hold"
        budget = RenderBudget(max_output=limit, output_note=note)
    text = render_chat(
        source,
        messages,
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
        origin=origin,
        budget=budget,
    )
    ids = encode_prompt(model, text, add_special=False, parse_special=True)
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
    return ids


def _chat_by_default(model: Any, override: str | None) -> bool:
    """Chat formatting is on by default when the model ships a template (as mlx-lm does) or
    one is given. A built-in fallback (e.g. Gemma's turn format for files without a template)
    is used only when asked for with --chat: such files are often base models, which continue
    text rather than answer turns."""
    return bool(override) or bool(model.metadata.get("tokenizer.chat_template"))


# -- subcommands ------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load(args)
    settings = _sampler_settings(args)
    settings.validate()
    use_chat = args.chat if args.chat is not None else _chat_by_default(model, args.chat_template)
    if args.prompt_ids is not None:
        prompt: Any = args.prompt_ids
    else:
        text = args.prompt
        if args.prompt_file:
            text = _read_prompt_file(args.prompt_file)
        if text is None:
            raise RequestError("give a prompt with --prompt, --prompt-file or --prompt-ids")
        if use_chat:
            messages = [{"role": "system", "content": args.system}] if args.system else []
            messages.append({"role": "user", "content": text})
            prompt = chat_prompt_ids(model, messages, args.chat_template)
        else:
            prompt = text
    pieces: list[str] = []
    ids: list[int] = []
    for tok in model.generate(prompt, args.max_tokens, settings, stop=args.stop or ()):
        if tok.id >= 0:
            ids.append(tok.id)
        pieces.append(tok.text)
        if args.output_format == "text" and tok.text:
            sys.stdout.write(tok.text)
            sys.stdout.flush()
    stats = model.last_stats
    if model.profiling:
        print_profile(stats)
    if args.output_format == "text":
        sys.stdout.write("\n")
    elif args.output_format == "json":
        json.dump(
            {
                "text": "".join(pieces),
                "tokens": ids,
                "stop_reason": stats.stop_reason,
                "prompt_tokens": stats.prompt_tokens,
                "generated_tokens": stats.generated_tokens,
                "prompt_tps": stats.prompt_tps,
                "decode_tps": stats.decode_tps,
                "peak_rss_bytes": peak_rss_bytes(),
            },
            sys.stdout,
            ensure_ascii=False,
        )
        sys.stdout.write("\n")
    _print_stats(stats)
    return 0


def _read_prompt_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise RequestError(f"--prompt-file {path}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise RequestError(
            f"--prompt-file {path}: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def cmd_chat(args: argparse.Namespace) -> int:
    model = _load(args)
    settings = _sampler_settings(args)
    settings.validate()
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            "chat: type a message; /reset clears the conversation, /exit or Ctrl-D quits",
            file=sys.stderr,
        )
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            model.reset()
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = chat_prompt_ids(model, messages, args.chat_template)
        reply: list[str] = []
        for tok in model.generate(ids, args.max_tokens, settings):
            reply.append(tok.text)
            sys.stdout.write(tok.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
        _print_stats(model.last_stats)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .config import describe, model_config
    from .gguf_file import read_gguf

    g = read_gguf(check_model_file(Path(args.path)))
    info: dict[str, Any] = {
        "path": str(g.path),
        "gguf_version": g.version,
        "file_bytes": g.file_size,
    }
    try:
        info["model"] = describe(model_config(g))
    except MetallicError as e:
        info["model"] = {"architecture": g.get("general.architecture"), "unsupported": str(e)}
    by_type: dict[str, dict[str, int]] = {}
    for t in g.tensors.values():
        row = by_type.setdefault(t.type_name, {"tensors": 0, "bytes": 0})
        row["tensors"] += 1
        row["bytes"] += t.nbytes
    info["tensor_count"] = len(g.tensors)
    info["tensor_types"] = by_type
    tokens = g.get("tokenizer.ggml.tokens")
    info["tokenizer"] = {
        "model": g.get("tokenizer.ggml.model"),
        "pre": g.get("tokenizer.ggml.pre"),
        "tokens": len(tokens) if tokens is not None else 0,
    }
    info["chat_template"] = bool(g.get("tokenizer.chat_template"))
    if args.tensors:
        info["tensors"] = [
            {"name": t.name, "type": t.type_name, "shape": list(t.shape), "bytes": t.nbytes}
            for t in g.tensors.values()
        ]
    if args.json:
        json.dump(info, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"file:          {info['path']} ({g.file_size / 2**20:.1f} MiB, GGUF v{g.version})")
    for k, v in info["model"].items():
        print(f"{k + ':':<22} {v}")
    print(f"tensors:       {len(g.tensors)}")
    for name, row in sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"  {name:<8} {row['tensors']:>5} tensors {row['bytes'] / 2**20:>10.1f} MiB")
    tk = info["tokenizer"]
    print(f"tokenizer:     {tk['model']} (pre {tk['pre']}), {tk['tokens']} tokens")
    print(f"chat template: {'yes' if info['chat_template'] else 'no'}")
    if args.tensors:
        for t in info["tensors"]:
            print(f"  {t['name']:<40} {t['type']:<6} {str(t['shape']):<20} {t['bytes']:>12}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from .gguf_file import read_gguf
    from .tokenizer import Tokenizer

    tok = Tokenizer.from_metadata(read_gguf(resolve_model(args.model)).metadata)
    if args.decode:
        sys.stdout.write(tok.decode(args.ids, special=True) + "\n")
        return 0
    ids = tok.encode(
        args.text, add_special=not args.no_special, parse_special=not args.no_parse_special
    )
    if args.ids_only:
        print(" ".join(map(str, ids)))
        return 0
    for i in ids:
        piece = tok.token_to_piece(i, special=True).decode("utf-8", errors="backslashreplace")
        print(f"{i:>8}  {piece!r}")
    print(f"{len(ids)} tokens", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metallic",
        description="Metallic: run GGUF language models (Qwen2/2.5, Qwen3, Llama, Gemma 3) "
        "from the command line.",
        epilog="Errors are one line on stderr; exit status 1 for an error, 2 for a bad command "
        "line, 130 when interrupted.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    g = sub.add_parser(
        "generate",
        help="continue a prompt, streaming the text",
        description="Generate text from a prompt. The text streams to stdout; "
        "timings and peak memory go to stderr at the end.",
    )
    _add_model_options(g)
    src = g.add_argument_group("prompt")
    src.add_argument("-p", "--prompt", default=None, help="prompt text")
    src.add_argument(
        "-f", "--prompt-file", default=None, metavar="FILE", help="read the prompt from a file"
    )
    src.add_argument(
        "--prompt-ids",
        type=_ids,
        default=None,
        metavar="IDS",
        help="prompt as token ids ('1,2,3'): skips tokenizer and chat template",
    )
    chat = src.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="format the prompt as a user turn with the chat template (default "
        "when the model has one)",
    )
    chat.add_argument(
        "--no-chat", "--raw", dest="chat", action="store_false", help="use the prompt text as is"
    )
    g.add_argument(
        "-n",
        "--max-tokens",
        type=_int_in(0),
        default=256,
        metavar="N",
        help="most tokens to generate (default 256)",
    )
    g.add_argument(
        "--stop",
        action="append",
        metavar="TEXT",
        help="stop when the output contains TEXT (repeatable); end-of-generation "
        "tokens always stop",
    )
    g.add_argument(
        "--output-format",
        choices=["text", "json", "none"],
        default="text",
        help="text: stream to stdout; json: one JSON object at the end; none: only "
        "the timings on stderr",
    )
    _add_chat_options(g)
    _add_sampling_options(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser(
        "chat",
        help="interactive multi-turn chat",
        description="Chat with a model; the KV cache is kept between turns, so "
        "each turn only processes its new tokens.",
    )
    _add_model_options(c)
    c.add_argument(
        "-n",
        "--max-tokens",
        type=_int_in(1),
        default=1024,
        metavar="N",
        help="most tokens per reply (default 1024)",
    )
    _add_chat_options(c)
    _add_sampling_options(c)
    c.set_defaults(func=cmd_chat)

    i = sub.add_parser("inspect", help="show a GGUF file's model, tensors and tokenizer")
    i.add_argument("path", help="GGUF file")
    i.add_argument("--tensors", action="store_true", help="list every tensor with its format")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("tokenize", help="show how text tokenizes (or --decode ids)")
    t.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="PATH|NAME",
        help=f"GGUF file or packaged model name (default: {DEFAULT_MODEL})",
    )
    t.add_argument("text", help="text to tokenize (or ids with --decode)")
    t.add_argument("--ids-only", action="store_true", help="print only the ids")
    t.add_argument("--no-special", action="store_true", help="do not add BOS/EOS")
    t.add_argument(
        "--no-parse-special", action="store_true", help="treat special-token text as plain text"
    )
    t.add_argument("--decode", action="store_true", help="decode the given ids to text")
    t.set_defaults(func=cmd_tokenize)

    from .bench import add_parser as add_bench

    add_bench(sub)
    for cmd in sub.choices.values():
        # Also after the command (`generate ... --debug`); SUPPRESS keeps a --debug given
        # before the command from being reset to False by the subcommand's default.
        cmd.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
    return parser


_DEBUG_HELP = "on an error, also print the Python traceback (for bug reports)"
_BUG = "internal error (a bug in metallic, please report it): "


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that depend on more than one argument, reported as usage errors (status 2)."""
    if args.command == "bench":
        from .bench import validate

        validate(args)
    if args.command == "generate" and all(
        v is None for v in (args.prompt, args.prompt_file, args.prompt_ids)
    ):
        _subparser(parser, "generate").error(
            "give a prompt with --prompt, --prompt-file or --prompt-ids"
        )
    if args.command == "tokenize" and args.decode:
        try:
            args.ids = _ids(args.text)
        except argparse.ArgumentTypeError as e:
            _subparser(parser, "tokenize").error(f"argument text (with --decode): {e}")


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # Python's format names the source line that warned, which means nothing to a CLI user.
    print(f"warning: {_one_line(str(message))}", file=file or sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad command line exits here, with status 2
    _check_args(parser, args)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            status = int(args.func(args))
            # Inside the try: a closed pipe often shows only when the buffered rest is written.
            sys.stdout.flush()
            return status
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, as Unix tools do. Python flushes
            # stdout again at exit, which would fail the same way: point it at /dev/null
            # (the recipe of Python's signal module documentation).
            try:
                fd = sys.stdout.fileno()
            except (OSError, ValueError):  # not a real file (main called in-process)
                return 141
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
            return 141  # 128 + SIGPIPE, the status of a process the signal ended
        except KeyboardInterrupt:
            print(file=sys.stderr)  # end the line ^C was echoed on
            return 130
        except InternalError as e:
            message = str(e)
            _report(args, message if message.startswith("internal error") else _BUG + message)
        except MetallicError as e:
            _report(args, f"error: {e}")
        except OSError as e:
            # Reading or writing failed (a full disk, a vanished file): the environment's
            # fault, not a bug.
            _report(args, f"error: {e}")
        except Exception as e:
            # Every error a user can cause is a MetallicError, so anything else is a bug.
            _report(args, f"{_BUG}{type(e).__name__}: {e}")
        return 1


def _report(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(_one_line(message), file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
