"""``dnnspec plot RUN_DIR... [-o out.png]``: learning curves of one or several runs on the same axes.

Reads each run folder's ``history.csv`` (written by ``dnnspec train``; the checkpoint's own
rows when ``history.csv`` is behind them, after a kill) and draws training (solid) and
validation (dashed) loss and accuracy per epoch. Needs matplotlib.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by 'dnnspec train --out'")
    parser.add_argument("-o", "--out", default="curves.png", metavar="PNG",
                        help="the figure to write (default: curves.png in the current folder)")


def run(args: argparse.Namespace) -> int:
    from ..plots import plot_runs

    path = plot_runs(args.runs, args.out)
    print(f"wrote {path} ({len(args.runs)} run{'s' if len(args.runs) > 1 else ''})")
    return 0
