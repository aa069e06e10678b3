"""`serve`: an OpenAI- and Ollama-compatible HTTP server (metallic.server) on uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from .cli_options import add_model_options, int_in
from .errors import RequestError
from .models import DEFAULT_CHAT_MODEL, KNOWN_MODELS

if TYPE_CHECKING:
    from .model import Model
    from .server.state import ServerState

API_KEY_ENV = "METALLIC_API_KEY"
SHUTDOWN_SECONDS = 10  # on Ctrl-C / SIGTERM: how long running streams may finish


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI and Ollama APIs)",
        description="Serve a model over HTTP with the OpenAI API (/v1/models, /v1/completions, "
        "/v1/chat/completions) and the Ollama API (/api/generate, /api/chat, /api/tags, ...), "
        "plus /health, /metrics, /tokenize and /detokenize. Requests are batched: up to --slots "
        "sequences run together, each with its own KV cache of --ctx-size tokens. Needs the "
        "extra: pip install 'metallic-llm[serve]'. Ctrl-C stops it gracefully.",
    )
    m = add_model_options(p, DEFAULT_CHAT_MODEL, context=False, profile=False)
    m.add_argument(
        "--model-alias",
        default=None,
        metavar="NAME",
        help="the model's name in /v1/models and /api/tags, which requests use (default: "
        "the model's name if -m is one, else the file name without .gguf; the file name is "
        "accepted too)",
    )
    m.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME|FILE|JINJA",
        help="override the model's chat template for /v1/chat/completions and /api/chat: a "
        "built-in name, a file, or Jinja text",
    )
    b = p.add_argument_group("batching")
    b.add_argument(
        "--slots",
        type=int_in(1, 256),
        default=4,
        metavar="N",
        help="sequences served at once, each with its own KV cache (default 4); more requests "
        "wait in the queue",
    )
    b.add_argument(
        "-c",
        "--ctx-size",
        "--n-ctx",
        dest="n_ctx",
        type=int_in(1, 1 << 20),
        default=None,
        metavar="N",
        help="context per slot in tokens: prompt + reply (default: the model's, at most 4096)",
    )
    b.add_argument(
        "--batch",
        type=int_in(1, 1 << 16),
        default=512,
        metavar="N",
        help="most tokens one step runs over all slots: one per decoding stream plus prompt "
        "chunks (default 512)",
    )
    b.add_argument(
        "--prefill-chunk",
        type=int_in(1, 1 << 16),
        default=None,
        metavar="N",
        help="most prompt tokens per step while other streams are decoding, so a long prompt "
        "delays them by one chunk per step (default 256)",
    )
    b.add_argument(
        "--max-queue",
        type=int_in(0),
        default=64,
        metavar="N",
        help="requests that may wait for a free slot; more get 503 with Retry-After (default 64)",
    )
    b.add_argument(
        "--max-tokens",
        type=int_in(1),
        default=None,
        metavar="N",
        help="cap on a request's max_tokens / num_predict, and its default (default: none, "
        "the context bounds a reply)",
    )
    h = p.add_argument_group("HTTP")
    h.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every "
        "interface: then set --api-key)",
    )
    h.add_argument(
        "--port", type=int_in(0, 65535), default=8080, help="port to listen on (default 8080)"
    )
    h.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
        f"${API_KEY_ENV}, else no key)",
    )
    h.add_argument(
        "--max-body",
        type=int_in(1),
        default=8 << 20,
        metavar="BYTES",
        help="largest request body; larger ones get 413 (default 8388608, 8 MiB)",
    )
    p.set_defaults(func=cmd_serve, default_model=DEFAULT_CHAT_MODEL)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .server.app import create_app
        from .server.state import ServerOptions
    except ImportError as e:
        raise RequestError(
            f"serve needs the optional extra 'serve' ({e.name} is missing): "
            "pip install 'metallic-llm[serve]'"
        ) from None
    from .models import resolve_model
    from .scheduler import make_slots

    _configure_logging()
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    name = args.model if args.model is not None else args.default_model
    alias = args.model_alias or (name if name in KNOWN_MODELS else None)
    options = ServerOptions(
        model_alias=alias,
        api_key=api_key,
        max_body=args.max_body,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        prefill_chunk=args.prefill_chunk,
        chat_template=args.chat_template,
    )
    url = _url(args.host, args.port)
    server: uvicorn.Server | None = None

    def loader() -> tuple[Model, Any]:
        path = resolve_model(args.model, default=args.default_model)
        print(f"loading {path} for {args.slots} slots ...", file=sys.stderr, flush=True)
        return make_slots(
            path,
            args.slots,
            args.n_ctx,
            args.backend,
            threads=args.threads,
            max_batch=args.batch,
            kv_dtype=args.kv_dtype,
        )

    def on_loaded(state: ServerState) -> None:
        if state.load_error is not None:
            if server is not None:
                server.should_exit = True
            return
        print(ready_message(state, url, args.kv_dtype), file=sys.stderr, flush=True)

    app = create_app(options, loader, on_loaded=on_loaded)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=False,  # the server logs its own line per request
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
        log_level="info",
    )
    server = uvicorn.Server(config)
    print(f"metallic serve: {url} (answers 503 until the model is loaded)", file=sys.stderr)
    server.run()
    state = app.state.metallic
    if state.load_error is not None:
        raise state.load_error
    return 0


def ready_message(state: ServerState, url: str, kv_dtype: str | None = None) -> str:
    """What the server allocated, printed once it serves."""
    model = state.model
    scheduler = state.scheduler
    assert model is not None and scheduler is not None
    cfg = model.config
    elem = kv_element_bytes(model, kv_dtype)
    kv = kv_cache_bytes(model, scheduler.n_ctx, scheduler.n_slots, elem)
    return (
        f"serving {state.name} ({cfg.arch}, {cfg.n_layer} layers, vocab {cfg.n_vocab}) from "
        f"{model.path} on {model.backend} with {model.threads} threads, loaded in "
        f"{state.load_seconds:.2f} s\n"
        f"  {scheduler.n_slots} slots x {scheduler.n_ctx} tokens of context; KV cache "
        f"{kv / 2**20:.1f} MiB ({cfg.n_layer} layers x 2 x {cfg.n_head_kv} KV heads x "
        f"{cfg.head_dim} x {scheduler.n_ctx} positions x {elem} bytes x {scheduler.n_slots} "
        f"slots); up to {scheduler.max_batch} tokens per step, queue of {scheduler.max_queue}\n"
        f"  listening on {url}: OpenAI API at {url}/v1, Ollama API at {url}/api, {url}/health, "
        f"{url}/metrics"
    )


def kv_element_bytes(model: Model, kv_dtype: str | None) -> int:
    """Bytes of one cached key or value element (load()'s default: f32 for F32 models)."""
    if kv_dtype is None:
        all_f32 = all(t.type.name == "F32" for t in model.gguf.tensors.values())
        kv_dtype = "f32" if all_f32 else "f16"
    return 4 if kv_dtype == "f32" else 2


def kv_cache_bytes(model: Model, n_ctx: int, n_slots: int, elem: int) -> int:
    cfg = model.config
    return cfg.n_layer * 2 * cfg.n_head_kv * cfg.head_dim * n_ctx * elem * n_slots


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _configure_logging() -> None:
    logger = logging.getLogger("metallic")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    # One line per request at INFO; METALLIC_LOG_LEVEL (instrument.py) chooses otherwise.
    from . import instrument

    logger.setLevel(instrument.settings().log_level or logging.INFO)
