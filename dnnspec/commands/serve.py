"""``dnnspec serve``: serve ONNX models over the Open Inference Protocol (KServe V2, HTTP).

Starlette, uvicorn, prometheus_client and onnxruntime are imported only when the command
runs; they come with the optional extra ``pip install 'dnnspec[serve]'``.
"""

from __future__ import annotations

import argparse
import math

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx|MODEL_DIR",
                        help="an ONNX file, a directory of *.onnx files, or a Triton-style repository "
                             "(<name>/<version>/model.onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes, each with its own sessions (GET /metrics sums them all)")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="onnxruntime execution provider")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per model (default 1)")
    parser.add_argument("--max-batch", type=int, default=64, help="most rows in one dynamic batch (default 64)")
    parser.add_argument("--batch-window-ms", type=float, default=2.0,
                        help="how long a batch waits for more requests; 0 turns dynamic batching off (default 2)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    parser.add_argument("--max-rows", type=int, default=1024, help="most rows in one request (default 1024)")
    parser.add_argument("--timeout-s", type=float, default=30.0,
                        help="limit for receiving a body and for running one request, in seconds (default 30)")
    parser.add_argument("--max-answer-mb", type=float, default=64.0,
                        help="largest answer in MiB; a request that could get more gets 400 (default 64)")
    parser.add_argument("--max-connections", type=int, default=1000,
                        help="most open connections; at the cap a new one closes the quietest idle one "
                             "(default 1000, lowered to fit the open-file limit)")
    parser.add_argument("--header-timeout-s", type=float, default=10.0,
                        help="limit for receiving a request's line and headers, in seconds (default 10)")
    parser.add_argument("--keep-alive-s", type=float, default=5.0,
                        help="how long an idle connection stays open after an answer, in seconds (default 5)")
    parser.add_argument("--max-header-kb", type=float, default=64.0,
                        help="largest request line and headers in KiB; more gets 431 (default 64)")


def config_from_args(args: argparse.Namespace):
    """A checked ServeConfig; UsageError for values out of range."""
    from ..serve.app import ServeConfig

    counts = [("port", 0, 65535), ("workers", 1, None), ("threads", 1, None), ("max_batch", 1, None),
              ("max_rows", 1, None), ("max_connections", 1, None)]
    # floats: (option, whether 0 is allowed); every one must be finite (inf would overflow int() or a timer)
    amounts = [("batch_window_ms", True), ("max_body_mb", False), ("timeout_s", False), ("max_answer_mb", False),
               ("header_timeout_s", False), ("keep_alive_s", False), ("max_header_kb", False)]
    checks = [(lo <= getattr(args, name) and (hi is None or getattr(args, name) <= hi),
               f"--{name.replace('_', '-')} must be " + (f"in {lo}..{hi}" if hi is not None else f">= {lo}"))
              for name, lo, hi in counts]
    checks += [(math.isfinite(getattr(args, name)) and (getattr(args, name) > 0 or zero and getattr(args, name) == 0),
                f"--{name.replace('_', '-')} must be " + (">= 0" if zero else "> 0") + " and finite")
               for name, zero in amounts]
    checks += [(args.max_header_kb >= 1, "--max-header-kb must be >= 1"),
               (args.workers == 1 or args.port != 0, "--workers above 1 needs a fixed --port")]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return ServeConfig(model_path=args.model, host=args.host, port=args.port, workers=args.workers,
                       provider=args.provider, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                       max_body_mb=args.max_body_mb, max_rows=args.max_rows, timeout_s=args.timeout_s,
                       threads=args.threads, max_answer_mb=args.max_answer_mb, max_connections=args.max_connections,
                       header_timeout_s=args.header_timeout_s, keep_alive_s=args.keep_alive_s,
                       max_header_kb=args.max_header_kb)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve.app import serve
    except ModuleNotFoundError as e:
        raise UsageError(f"dnnspec serve needs '{e.name}': pip install 'dnnspec[serve]'") from None
    serve(config_from_args(args))
    return 0
