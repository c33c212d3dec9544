"""Command-line commands; each module has add_arguments(parser) and run(args) -> int."""

import argparse


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, else a one-line usage error."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, found {text!r}")
    return n
