"""`python -m metallic ...` (or the `metallic` script): the parser and the error policy.

The commands live beside this file: cli_generate (generate, chat), cli_models (pull, list,
rm, inspect, tokenize), bench, cli_doctor (doctor); cli_options holds the argument types and
shared options.

Output goes to stdout (generated text, JSON); progress, timings and errors to stderr, so the
text can be piped. Every error is one line on stderr (a traceback only with --debug). Exit
status: 0 success, 1 error, 2 bad command line, 130 interrupted (Ctrl-C), 141 when the reader of
stdout went away (`| head`), as for a process killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from .errors import InternalError, MetallicError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Metallic: run GGUF language models (Qwen2/2.5, Qwen3, Llama, Gemma 3) "
        "from the command line.",
        epilog="Errors are one line on stderr; exit status 1 for an error, 2 for a bad command "
        "line, 130 when interrupted.",
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the version and build, then exit"
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from . import cli_doctor, cli_generate, cli_models, cli_serve, cli_trace
    from .bench import add_parser as add_bench

    cli_generate.register(sub)
    cli_models.register(sub)
    cli_serve.register(sub)
    cli_trace.register(sub)
    cli_doctor.register(sub)

    add_bench(sub)
    for cmd in sub.choices.values():
        # Also after the command (`generate ... --debug`); SUPPRESS keeps a --debug given
        # before the command from being reset to False by the subcommand's default.
        cmd.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
        )
    return parser


def _prog() -> str:
    """How the user ran us, for usage lines: the `metallic` console script or the module."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "metallic" if name == "metallic" else "python -m metallic"


class _Version(argparse.Action):
    # argparse's own version action rewraps the text to the terminal's width.
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        print(version_line())
        parser.exit()


def version_line() -> str:
    """The distribution's version and what the core was built with, for `--version`."""
    from . import __version__, _core

    backends = ["cpu"] + [
        b
        for b, ok in (
            ("metal", _core.metal_available()),
            ("metal-sim", _core.metal_sim_available()),
        )
        if ok
    ]
    return (
        f"metallic-llm {__version__} (CPU kernels: {_core.kernel_isa()}; backends: "
        f"{', '.join(backends)}; Python {sys.version.split()[0]})"
    )


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
    if args.command == "tokenize":
        from .cli_models import check_tokenize_args

        if error := check_tokenize_args(args):
            _subparser(parser, "tokenize").error(error)


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
