"""The ``dnnspec`` command: a thin skin over the Python API.

Each subcommand lives in ``dnnspec/commands/<name>.py`` with ``add_arguments(parser)``
and ``run(args) -> int``. Modules are imported lazily, only for the command that runs,
so ``dnnspec check`` never imports onnx or onnxruntime. Errors a user can cause
(``DnnspecError``) print one clear message and set the exit status: 1 for spec and
data errors, 2 for usage errors; never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DnnspecError, SpecError

COMMANDS = {
    "check": "explain a spec: layers, shapes, parameters, FLOPs, recipe",
    "train": "train a spec on data with the NumPy engine",
    "export": "write a trained run as an ONNX model",
    "predict": "run an ONNX model on inputs with onnxruntime",
    "evaluate": "measure a model on labelled data: accuracy, per-class scores, confusion matrix",
    "serve": "serve ONNX models over the Open Inference Protocol (HTTP)",
    "augment-preview": "draw originals beside augmented variants as a PNG grid",
    "plot": "draw learning curves of one or several runs",
    "search": "search a space of spec variants: check every candidate, train them in parallel, rank them",
    "prune": "remove the weakest units and filters of a trained run: a smaller, faster network",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one line
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _module(name: str):
    return importlib.import_module(f"dnnspec.commands.{name.replace('-', '_')}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="dnnspec", description="Declarative deep neural networks: check, train, export, serve.")
    parser.add_argument("--version", action="version", version=f"dnnspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            try:
                _module(name).add_arguments(p)
            except ModuleNotFoundError as e:
                if e.name != f"dnnspec.commands.{name.replace('-', '_')}":
                    raise
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        mod = _module(args.command)
    except ModuleNotFoundError:
        print(f"dnnspec: error: '{args.command}' is not available in this installation", file=sys.stderr)
        return 2
    try:
        return int(mod.run(args) or 0)
    except SpecError as e:
        print(e.render(), file=sys.stderr)
        return e.exit_code
    except DnnspecError as e:
        print(f"dnnspec: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dnnspec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
