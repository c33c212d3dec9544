"""``dnnspec serve``: serve ONNX models over the Open Inference Protocol (KServe V2, HTTP).

Starlette, uvicorn and onnxruntime are imported only when the command runs; they come
with the optional extra ``pip install 'dnnspec[serve]'``.
"""

from __future__ import annotations

import argparse

from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx|MODEL_DIR",
                        help="an ONNX file, a directory of *.onnx files, or a Triton-style repository "
                             "(<name>/<version>/model.onnx)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, each with its own sessions")
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="onnxruntime execution provider")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per model (default 1)")
    parser.add_argument("--max-batch", type=int, default=64, help="most rows in one dynamic batch (default 64)")
    parser.add_argument("--batch-window-ms", type=float, default=2.0,
                        help="how long a batch waits for more requests; 0 turns dynamic batching off (default 2)")
    parser.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    parser.add_argument("--max-rows", type=int, default=1024, help="most rows in one request (default 1024)")
    parser.add_argument("--timeout-s", type=float, default=30.0,
                        help="limit for receiving a body and for running one request, in seconds (default 30)")


def config_from_args(args: argparse.Namespace):
    """A checked ServeConfig; UsageError for values out of range."""
    from ..serve.app import ServeConfig

    checks = [(0 <= args.port <= 65535, "--port must be in 0..65535"), (args.workers >= 1, "--workers must be >= 1"),
              (args.threads >= 1, "--threads must be >= 1"), (args.max_batch >= 1, "--max-batch must be >= 1"),
              (args.batch_window_ms >= 0, "--batch-window-ms must be >= 0"),
              (args.max_body_mb > 0, "--max-body-mb must be > 0"), (args.max_rows >= 1, "--max-rows must be >= 1"),
              (args.timeout_s > 0, "--timeout-s must be > 0"),
              (args.workers == 1 or args.port != 0, "--workers above 1 needs a fixed --port")]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    return ServeConfig(model_path=args.model, host=args.host, port=args.port, workers=args.workers,
                       provider=args.provider, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                       max_body_mb=args.max_body_mb, max_rows=args.max_rows, timeout_s=args.timeout_s,
                       threads=args.threads)


def run(args: argparse.Namespace) -> int:
    try:
        from ..serve.app import serve
    except ModuleNotFoundError as e:
        raise UsageError(f"dnnspec serve needs '{e.name}': pip install 'dnnspec[serve]'") from None
    serve(config_from_args(args))
    return 0
