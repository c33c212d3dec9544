"""``dnnspec check FILE...``: parse and check specs; print a summary, the IR as JSON, or the spec rendered.

``--data [SOURCE]`` also reads the data (SOURCE, or the spec's ``data`` statement) and
checks it against each spec before any training: shapes, channels, classes, a table's
label column and features, saying what the data has and what the spec should say.

``--graph FILE.svg`` (or ``.png``) draws the network (dnnspec.netdraw, matplotlib).

Exit status: 0 when every file is fine, 1 when a spec has errors, 2 for usage errors
(missing file, directory, unreadable file). Imports only the front end: no onnx,
onnxruntime or matplotlib on this path (but --graph's), so it starts fast.
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
    parser.add_argument("--data", metavar="SOURCE", nargs="?", const="",
                        help="also check data against the spec: SOURCE as train --data takes it (alone: the spec's "
                             "data statement)")
    parser.add_argument("--graph", metavar="FILE", help="draw the network into FILE (.svg or .png): a box per layer "
                        "with its output shape (needs matplotlib: pip install 'dnnspec[plot]')")
    parser.add_argument("--label", metavar="NAME", help="with --data: a CSV table's label column (default: the last)")
    parser.add_argument("--data-dir", metavar="DIR", help="with --data: folder with downloaded data sets")


def run(args: argparse.Namespace) -> int:
    """Check each file; report every error of every file; return the worst exit status."""
    from ..errors import DnnspecError, SpecError
    from ..frontend import load
    from ..summary import render, summary

    if args.graph and len(args.files) != 1:
        print("dnnspec: error: --graph draws one spec: give one FILE", file=sys.stderr)
        return 2
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
        if args.graph:
            status = max(status, _draw(model, args.graph))
        if args.data is not None:
            status = max(status, _check_data(model, args))
    if args.json and models:
        print(json.dumps(models[0] if len(args.files) == 1 else models, indent=2))
    return status


def _draw(model, path: str) -> int:
    """Draw ``model`` into ``path``; say where on stderr (stdout keeps the summary, JSON or spec)."""
    from ..errors import DnnspecError
    from ..netdraw import draw

    try:
        print(f"drew {model.name} ({len(model.layers)} layers) to {draw(model, path)}", file=sys.stderr)
    except DnnspecError as e:
        print(f"dnnspec: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _check_data(model, args: argparse.Namespace) -> int:
    """Load the data and check it against ``model``: what it has on stdout (stderr with --json), or the error."""
    from ..data import describe_dataset, load_data
    from ..errors import DnnspecError

    out = sys.stderr if args.json else sys.stdout
    try:
        ds = load_data(args.data or None, model, data_dir=args.data_dir, batch=None, label=args.label)
    except DnnspecError as e:
        print(f"dnnspec: error: {e}", file=sys.stderr)
        return e.exit_code
    print(("" if args.json or args.render else "\n") + describe_dataset(ds, model), file=out)
    return 0
