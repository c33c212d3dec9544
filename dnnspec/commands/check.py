"""``dnnspec check FILE...``: parse and check specs; print a summary, the IR as JSON, or the spec rendered.

Exit status: 0 when every file is fine, 1 when a spec has errors, 2 for usage errors
(missing file, directory, unreadable file). Imports only the front end: no onnx,
onnxruntime or matplotlib on this path, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".dnn spec files")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the checked IR as JSON (a list for several files)")
    out.add_argument("--render", action="store_true", help="print the spec back with every default filled in")


def run(args: argparse.Namespace) -> int:
    """Check each file; report every error of every file; return the worst exit status."""
    from ..errors import DnnspecError, SpecError
    from ..frontend import load
    from ..summary import render, summary

    status, models = 0, []
    for i, path in enumerate(args.files):
        try:
            model = load(path)
        except SpecError as e:
            print(e.render(), file=sys.stderr)
            status = max(status, e.exit_code)
            continue
        except DnnspecError as e:
            print(f"dnnspec: error: {e}", file=sys.stderr)
            status = max(status, e.exit_code)
            continue
        if args.json:
            models.append(json.loads(model.to_json()))
        elif args.render:
            print(render(model), end="")
        else:
            print(("\n" if i else "") + summary(model), end="")
    if args.json and models:
        print(json.dumps(models[0] if len(args.files) == 1 else models, indent=2))
    return status
