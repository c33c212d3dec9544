"""Inference speed of exported models: onnxruntime next to the engine's NumPy forward.

For the MLP 784-256-128-10 and the CNN conv32-relu-pool-conv64-relu-pool-dense128-relu-
dense10 (Fashion-MNIST shapes), all measured in one run:

* latency per call at batch 1 (median of many calls), and
* images per second at batch 1024 (median of several calls),

for onnxruntime (intra_op_num_threads, sequential execution, all graph optimisations)
with dense layers as Gemm and as MatMul+Add, through ``Predictor.predict`` (input
checks included), and for ``net.forward``. Weights are random (speed does not depend
on them).

Then float32 against int8 (dynamic) and int8-static (QDQ, calibrated on 512 of the
random inputs) for each model, at batch 1 and 1024 in alternating rounds with the ratio
to float32 per round (bench/bench_quantize.py; it does the same for a trained run, with
test accuracy).

    python bench/bench_infer.py                    # CPU, 2 threads
    python bench/bench_infer.py --provider cuda    # CUDAExecutionProvider
    python bench/bench_infer.py --quick            # fewer repetitions (a smoke run)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_quantize import print_latency, three_models  # noqa: E402  (bench/bench_quantize.py)
from timing import time_calls  # noqa: E402  (bench/timing.py)

from dnnspec import ir  # noqa: E402
from dnnspec.engine.net import Net  # noqa: E402
from dnnspec.export.onnx_export import export  # noqa: E402
from dnnspec.export.predictor import Predictor, open_session  # noqa: E402

MODELS = {
    "mlp": ((784,), [("dense", {"units": 256}), ("relu", {}), ("dense", {"units": 128}), ("relu", {}),
                     ("dense", {"units": 10}), ("softmax", {})]),
    "cnn": ((1, 28, 28), [("conv2d", {"filters": 32}), ("relu", {}), ("maxpool", {"kernel": 2}),
                          ("conv2d", {"filters": 64}), ("relu", {}), ("maxpool", {"kernel": 2}), ("flatten", {}),
                          ("dense", {"units": 128}), ("relu", {}), ("dense", {"units": 10}), ("softmax", {})]),
}


def median_seconds(fn, calls: int, warmup: int) -> float:
    """Median wall time of one call of ``fn`` over ``calls`` timed calls after ``warmup`` untimed ones."""
    return statistics.median(time_calls(fn, calls, warmup))


def measure(name: str, fn_for_batch, reps: dict[int, int]) -> dict[str, float]:
    """Latency (us) at batch 1 and images/s at batch 1024 of one runner."""
    lat = median_seconds(fn_for_batch(1), reps[1], max(10, reps[1] // 10))
    thr = median_seconds(fn_for_batch(1024), reps[1024], 2)
    return {"name": name, "latency_us": lat * 1e6, "images_per_s": 1024 / thr}


def bench_model(key: str, provider: str, threads: int, reps: dict[int, int], tmp: Path) -> list[dict[str, float]]:
    in_shape, layers = MODELS[key]
    net = Net(ir.model_from_layers(in_shape, layers, scale=1 / 255), seed=0)
    rng = np.random.default_rng(0)
    inputs = {n: rng.uniform(0, 255, (n, *in_shape)).astype(np.float32) for n in (1, 1024)}
    rows = []
    for dense_op in ("gemm", "matmul"):
        path = export(net, tmp / f"{key}_{dense_op}.onnx", dense_op=dense_op)
        sess = open_session(path, provider, threads)
        out = [sess.get_outputs()[0].name]

        def ort_fn(n, sess=sess, out=out):
            feed = {"input": inputs[n]}
            return lambda: sess.run(out, feed)

        rows.append(measure(f"onnxruntime {dense_op}", ort_fn, reps))
        np.testing.assert_allclose(sess.run(out, {"input": inputs[1024]})[0], net.forward(inputs[1024]), atol=1e-5)
    pred = Predictor(tmp / f"{key}_gemm.onnx", provider, threads)
    rows.append(measure("Predictor.predict", lambda n: (lambda: pred.predict(inputs[n])), reps))
    rows.append(measure("engine net.forward", lambda n: (lambda: net.forward(inputs[n])), reps))
    return rows


def bench_int8(key: str, threads: int, rounds: int, batches: dict[int, int]) -> None:
    """float32, int8 and int8-static of one model (random weights) in alternating rounds (opset 27)."""
    from dnnspec.export.onnx_export import to_onnx
    from dnnspec.export.quantize import QDQ_MAX_OPSET

    in_shape, layers = MODELS[key]
    net = Net(ir.model_from_layers(in_shape, layers, scale=1 / 255), seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (1024, *in_shape)).astype(np.float32)
    models = three_models(to_onnx(net.model, net.params, opset=QDQ_MAX_OPSET).SerializeToString(), x[:512])
    print(f"\n{key}: float32 against int8, {threads} intra-op threads; sizes "
          + ", ".join(f"{n} {len(b) / 1e6:.2f} MB" for n, b in models.items()))
    print_latency(models, x, rounds, threads, batches)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    ap.add_argument("--quick", action="store_true", help="few repetitions: check that the script works")
    args = ap.parse_args(argv)
    reps = {1: 50, 1024: 3} if args.quick else {1: 2000, 1024: 20}
    print(f"onnxruntime {args.provider}, {args.threads} intra-op threads; numpy threads as configured "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); medians of {reps[1]} calls at batch 1, "
          f"{reps[1024]} at batch 1024")
    with tempfile.TemporaryDirectory(prefix="dnnspec-bench-") as tmp:
        for key in args.models.split(","):
            print(f"\n{key}: {'runner':<22} {'batch 1 (us/call)':>18} {'batch 1024 (images/s)':>22}")
            for r in bench_model(key.strip(), args.provider, args.threads, reps, Path(tmp)):
                print(f"{'':5}{r['name']:<22} {r['latency_us']:>18.1f} {r['images_per_s']:>22,.0f}")
    if args.provider == "cpu":  # int8 kernels are onnxruntime's CPU ones
        for key in args.models.split(","):
            bench_int8(key.strip(), args.threads, 3 if args.quick else 7, {1: 20, 1024: 1} if args.quick else
                       {1: 200, 1024: 2})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
