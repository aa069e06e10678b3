"""`trace`: the path of a prompt through the model, op by op (python/metallic/trace.py).

Text to stdout as it happens (the loading line to stderr, as `generate` does); `--json` prints
one JSON record per line instead (model, token, op, sample, and with --compare compare and
verdict records); `--dump DIR` writes every intermediate as .npy; `--compare HF_DIR` runs the
prompt through transformers too and reports the first op where the two disagree (exit status 1
when they do, as `cmp` does).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli_options import (
    add_model_options,
    add_sampling_options,
    float_in,
    int_in,
    sampler_settings,
    token_ids_arg,
)
from .errors import RequestError
from .models import DEFAULT_MODEL


def register(sub: Any) -> None:
    t = sub.add_parser(
        "trace",
        help="show every op of inference: shapes, weights, times, statistics, sampling",
        description="Run a prompt and N generated tokens with the forward pass unfused, and "
        "print its path as it happens: the tokens, then every op of every layer (input and "
        "output shapes, the weight's format and bytes, the backend routine and kernels, its "
        "time, mean / RMS / max |x| / non-finite count of its output), then the logits' top "
        "candidates and the sampler's choice with the candidates each filter left. "
        "docs/inference-path.md walks through it.",
    )
    add_model_options(t)
    src = t.add_argument_group("prompt")
    src.add_argument("-p", "--prompt", default=None, help="prompt text (used as is)")
    src.add_argument(
        "--prompt-ids", type=token_ids_arg, default=None, metavar="IDS", help="or token ids"
    )
    src.add_argument(
        "--chat",
        action="store_true",
        help="format the prompt as a user turn with the model's chat template",
    )
    t.add_argument(
        "-n",
        "--max-tokens",
        type=int_in(0),
        default=1,
        metavar="N",
        help="tokens to generate after the prompt's pass (default 1; 0: the pass only)",
    )
    show = t.add_argument_group("what to show")
    show.add_argument(
        "--layers", default=None, metavar="LIST", help="only these layers, e.g. '0,3-5'"
    )
    show.add_argument(
        "--ops",
        default=None,
        metavar="LIST",
        help="only these ops, e.g. 'attention,ffn_down' (the names: docs/inference-path.md)",
    )
    show.add_argument(
        "--top", type=int_in(1, 1000), default=10, metavar="K", help="logit candidates (10)"
    )
    show.add_argument("--json", action="store_true", help="one JSON record per line")
    show.add_argument(
        "--dump",
        default=None,
        metavar="DIR",
        help="write every intermediate (of the shown layers and ops) as DIR/stepK/L03.op.npy, "
        "the token ids as DIR/tokens.npy and the records as DIR/events.jsonl",
    )
    show.add_argument(
        "--html",
        default=None,
        metavar="FILE",
        help="also write a self-contained page: time per op, activation statistics per layer, "
        "attention pattern (needs plotly: pip install metallic-llm[viz])",
    )
    show.add_argument(
        "--attention-layer",
        type=int_in(0),
        default=0,
        metavar="L",
        help="the layer whose attention pattern --html draws (default 0)",
    )
    cmp = t.add_argument_group("compare with transformers")
    cmp.add_argument(
        "--compare",
        default=None,
        metavar="HF_DIR",
        help="run the prompt through Hugging Face transformers too (a model directory, or a "
        ".gguf for transformers to dequantize) and report the first layer and op where the "
        "two disagree; exit status 1 if they do. Needs torch and transformers",
    )
    cmp.add_argument(
        "--tolerance",
        type=float_in(0, 1e6, lo_open=True),
        default=None,
        metavar="X",
        help="relative RMS error beyond which an op disagrees (default 1e-2; raise it for "
        "quantized files)",
    )
    add_sampling_options(t)
    t.set_defaults(func=cmd_trace, default_model=DEFAULT_MODEL)


def _prompt_ids(model: Any, args: argparse.Namespace) -> list[int]:
    if args.prompt_ids is not None:
        return list(args.prompt_ids)
    if args.prompt is None:
        raise RequestError("give a prompt with --prompt or --prompt-ids")
    if args.chat:
        from .chat import chat_prompt_ids, require_chat_model

        require_chat_model(model, None, suggestion="a model with a chat template")
        return chat_prompt_ids(model, [{"role": "user", "content": args.prompt}])
    from .generate import encode_prompt

    return encode_prompt(model, args.prompt)


def _emit(args: argparse.Namespace, record: dict[str, Any] | None, lines: list[str]) -> None:
    if args.json:
        if record is not None:
            print(json.dumps(record, ensure_ascii=False), flush=True)
    else:
        for line in lines:
            print(line)
        sys.stdout.flush()


def cmd_trace(args: argparse.Namespace) -> int:
    from . import trace as tr
    from .cli_generate import load_model

    layers = tr.parse_layers(args.layers) if args.layers else None
    ops = tr.parse_ops(args.ops) if args.ops else None
    pick = tr.selector(layers, ops)
    settings = sampler_settings(args)
    settings.validate()
    reference = None
    if args.compare:
        from .trace_compare import load_reference

        reference = load_reference(args.compare)  # before our model: fail early if it cannot
    model = load_model(args)
    cfg = model.config
    if args.html and not args.attention_layer < cfg.n_layer:
        raise RequestError(
            f"--attention-layer {args.attention_layer}: the model has layers 0..{cfg.n_layer - 1}"
        )
    ids = _prompt_ids(model, args)

    _emit(
        args,
        {
            "event": "model",
            "path": str(model.path),
            "arch": cfg.arch,
            "backend": model.backend,
            "threads": model.threads,
            "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd,
            "n_head": cfg.n_head,
            "n_head_kv": cfg.n_head_kv,
            "head_dim": cfg.head_dim,
            "n_ff": cfg.n_ff,
            "n_vocab": cfg.n_vocab,
        },
        [
            f"model: {model.path.name}: {cfg.arch}, {cfg.n_layer} layers, {cfg.n_embd} wide, "
            f"{cfg.n_head} heads ({cfg.n_head_kv} kv) of {cfg.head_dim}, ffn {cfg.n_ff}, "
            f"vocab {cfg.n_vocab}; backend {model.backend}, {model.threads} threads",
            f"prompt: {len(ids)} tokens",
        ],
    )
    for i, t in enumerate(ids):
        p = tr.piece(model, t)
        _emit(
            args,
            {"event": "token", "index": i, "id": t, "piece": p},
            [f"  {i:>4}  id {t:>7}  {p!r}"],
        )

    shown: list[Any] = []  # the current step's events (all: the summary covers the pass)
    step_of_header = [-1]

    def on_event(e: Any) -> None:
        if reference is not None:  # --compare prints the comparison instead
            return
        if e.step != step_of_header[0]:
            step_of_header[0] = e.step
            shown.clear()
            if e.step == 0:
                what = f"the prompt's pass: {len(ids)} tokens at positions 0..{len(ids) - 1}"
            else:
                tok = trace_samples[-1].chosen
                what = f"decode of id {tok} {tr.piece(model, tok)!r} at position {e.pos}"
            _emit(args, None, ["", f"step {e.step}: {what}", tr.OP_HEADER])
        shown.append(e)
        if not pick(e):
            return
        _emit(args, e.record(), [tr.format_op(e)])

    trace_samples: list[Any] = []

    def on_sample(s: Any) -> None:
        trace_samples.append(s)
        if reference is not None:
            return
        _emit(args, s.record(), ["", "  " + tr.step_summary(shown), *tr.format_sample(s)])

    def keep(e: Any) -> bool:
        if reference is not None:
            return True
        if args.dump and pick(e):
            return True
        # --html draws the attention of one layer from its query and key
        attention = e.step == 0 and e.layer == args.attention_layer
        return bool(args.html) and attention and e.op in ("rope_q", "rope_k")

    trace = tr.run_trace(
        model,
        ids,
        0 if reference is not None else args.max_tokens,
        settings,
        on_event=on_event,
        on_sample=on_sample,
        keep_data=keep,
        top=args.top,
    )
    if reference is None and not trace.samples:  # -n 0: the pass's summary without sampling
        _emit(args, None, ["", "  " + tr.step_summary(shown)])
    if trace.samples and not args.json:
        text = model.detokenize(trace.generated) if "tokenizer.ggml.model" in model.metadata else ""
        print(f"\ngenerated: {trace.generated} {text!r}")
    if args.dump:
        root, count = tr.dump(trace, args.dump, cfg.n_layer, pick)
        print(f"dumped {count} tensors to {root}", file=sys.stderr)
    if args.html:
        from .trace_html import write_html

        write_html(trace, args.html, model, attention_layer=args.attention_layer)
        print(f"wrote {args.html}", file=sys.stderr)
    if reference is None:
        return 0
    return _compare(args, model, trace, reference, pick)


def _compare(args: argparse.Namespace, model: Any, trace: Any, reference: Any, pick: Any) -> int:
    from .trace_compare import (
        DEFAULT_TOLERANCE,
        compare,
        format_comparison,
        reference_outputs,
        verdict,
    )

    ref = reference_outputs(reference, trace.prompt)
    tol = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE
    result = compare(trace.events, ref, model.config, tol)
    first = result.first_divergence
    if args.json:
        for e in result.errors:
            if pick(e):
                print(json.dumps(e.record()))
        print(
            json.dumps(
                {
                    "event": "verdict",
                    "agree": first is None,
                    "tolerance": tol,
                    "compared": result.compared,
                    "first_layer": None if first is None else first.layer,
                    "first_op": None if first is None else first.op,
                    "rel_rms": None if first is None else first.rel_rms,
                    "text": verdict(result),
                }
            )
        )
    else:
        print(f"\ncompare with transformers ({args.compare}), prompt pass, tolerance {tol:g}:")
        for line in format_comparison(result, pick):
            print(line)
        print(verdict(result))
        quantized = sorted(
            {t.type_name for t in model.gguf.tensors.values() if len(t.shape) >= 2}
            - {"F32", "F16", "BF16"}
        )
        if first is not None and quantized and not str(args.compare).endswith(".gguf"):
            print(
                f"note: the file's matrices are quantized ({', '.join(quantized)}) and the "
                "reference's are not: their rounding alone gives errors of 1e-2 and more; "
                "raise --tolerance, or compare a F32/F16 file of the same model"
            )
    return 0 if first is None else 1
