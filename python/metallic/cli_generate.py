"""`generate` and `chat`: load a model, stream its tokens to stdout, timings to stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .cli_options import (
    add_chat_options,
    add_instrument_options,
    add_model_options,
    add_sampling_options,
    apply_instrument_options,
    escaped_text,
    int_in,
    sampler_settings,
    token_ids_arg,
)
from .errors import RequestError
from .models import DEFAULT_CHAT_MODEL, DEFAULT_MODEL, resolve_model
from .system import peak_rss_bytes


def register(sub: Any) -> None:
    g = sub.add_parser(
        "generate",
        help="continue a prompt, streaming the text",
        description="Generate text from a prompt. The text streams to stdout; timings (load, "
        "time to first token, prompt and decode speed) and peak memory go to stderr at the end.",
    )
    add_model_options(g)
    src = g.add_argument_group("prompt")
    src.add_argument("-p", "--prompt", default=None, help="prompt text")
    src.add_argument(
        "-f", "--prompt-file", default=None, metavar="FILE", help="read the prompt from a file"
    )
    src.add_argument(
        "--prompt-ids",
        type=token_ids_arg,
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
        help="format the prompt as a user turn with the chat template (default when the model "
        "has one; for a model without one, give --chat-template)",
    )
    chat.add_argument(
        "--no-chat", "--raw", dest="chat", action="store_false", help="use the prompt text as is"
    )
    g.add_argument(
        "-n",
        "--max-tokens",
        type=int_in(0),
        default=256,
        metavar="N",
        help="most tokens to generate (default 256)",
    )
    g.add_argument(
        "--stop",
        action="append",
        type=escaped_text,
        metavar="TEXT",
        help="stop when the output contains TEXT (repeatable; \\n, \\t, \\r and \\\\ are "
        "escapes, so --stop '\\n' ends at the first line); end-of-generation tokens always stop",
    )
    g.add_argument(
        "--output-format",
        choices=["text", "json", "none"],
        default="text",
        help="text: stream to stdout; json: one JSON object at the end; none: only the timings "
        "on stderr",
    )
    add_chat_options(g)
    add_sampling_options(g)
    add_instrument_options(g)
    g.set_defaults(func=cmd_generate, default_model=DEFAULT_MODEL)

    c = sub.add_parser(
        "chat",
        help="interactive multi-turn chat with an instruct model",
        description="Chat with an instruction-tuned model; the KV cache is kept between turns, "
        "so each turn only processes its new tokens. Models without a chat template of their "
        "own (base models) are refused unless --chat-template is given.",
    )
    add_model_options(c, default_model=DEFAULT_CHAT_MODEL)
    c.add_argument(
        "-n",
        "--max-tokens",
        type=int_in(1),
        default=1024,
        metavar="N",
        help="most tokens per reply (default 1024)",
    )
    add_chat_options(c)
    add_sampling_options(c)
    add_instrument_options(c)
    c.set_defaults(func=cmd_chat, default_model=DEFAULT_CHAT_MODEL)


def load_model(args: argparse.Namespace) -> Any:
    from .model import load

    apply_instrument_options(args)
    path = resolve_model(args.model, default=args.default_model)
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


def print_stats(stats: Any, model: Any | None = None) -> None:
    """The one-line summary: the generation's (prompt, first token, decode, stop), then the
    load time (when given the model, the first time) and the process's peak memory."""
    load = f" | load: {model.load_seconds:.2f} s" if model is not None else ""
    print(
        f"\n{stats}{load} | peak memory: {peak_rss_bytes() / 2**20:.0f} MiB",
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


_GET_INSTRUCT = f"e.g. python -m metallic chat -m {DEFAULT_CHAT_MODEL}"


def cmd_generate(args: argparse.Namespace) -> int:
    from .chat import chat_prompt_ids, has_chat_template, require_chat_model

    model = load_model(args)
    settings = sampler_settings(args)
    settings.validate()
    if args.prompt_ids is not None:
        prompt: Any = args.prompt_ids
    else:
        text = args.prompt
        if args.prompt_file:
            text = _read_prompt_file(args.prompt_file)
        if text is None:
            raise RequestError("give a prompt with --prompt, --prompt-file or --prompt-ids")
        # Chat formatting by default when the model ships a template (as mlx-lm does) or one
        # is given; a base model continues the text as is.
        use_chat = args.chat
        if use_chat is None:
            use_chat = args.chat_template is not None or has_chat_template(model)
        if use_chat:
            require_chat_model(model, args.chat_template, suggestion=_GET_INSTRUCT)
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
                "first_token_seconds": stats.first_token_seconds,
                "load_seconds": model.load_seconds,
                "peak_rss_bytes": peak_rss_bytes(),
            },
            sys.stdout,
            ensure_ascii=False,
        )
        sys.stdout.write("\n")
    print_stats(stats, model)
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
    from .chat import chat_prompt_ids, require_chat_model

    model = load_model(args)
    require_chat_model(model, args.chat_template, suggestion=_GET_INSTRUCT)
    settings = sampler_settings(args)
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
    first = True
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
        print_stats(model.last_stats, model if first else None)
        first = False
    return 0
