"""float32 against int8 (dynamic and static QDQ) for a trained run: accuracy, size, onnxruntime latency.

Exports the run three ways at the same opset (27, the highest static int8 loads at):
float32, ``int8`` (dynamic: dense layers' weights int8) and ``int8-static`` (QDQ,
calibrated on a seeded sample of the training split, as ``dnnspec export --quantize
int8-static`` does), then reports the test accuracy on the run's test split, the file
sizes, and the time per call at batch 1 and batch 1024 in alternating rounds: in each
round every model runs ``calls`` times in turn (the order reversed every other round), and
the ratio to float32 is taken within the round, so that a slow spell of a shared machine
hits all three alike. Each round's ratios are printed, then their medians.

    python bench/bench_quantize.py RUN_DIR [--threads 1] [--rounds 7] [--calibration 512] [--out DIR]
    python bench/bench_quantize.py /tmp/cnn --quick      # few rounds (a smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dnnspec.export.quantize import (  # noqa: E402
    DEFAULT_CALIBRATION,
    QDQ_MAX_OPSET,
    accuracy,
    alternating_rounds,
    calibration_sample,
    quantize_int8,
    quantize_static_int8,
    session_runner,
)

BATCHES = {1: 200, 1024: 2}  # calls per turn at each batch size


def three_models(float_bytes: bytes, x_calib: np.ndarray) -> dict[str, bytes]:
    """{"float32", "int8" (dynamic), "int8-static" (QDQ calibrated on ``x_calib``)}: ONNX bytes."""
    return {"float32": float_bytes, "int8": quantize_int8(float_bytes),
            "int8-static": quantize_static_int8(float_bytes, x_calib)}


def latency_rounds(models: dict[str, bytes], x: np.ndarray, rounds: int, calls: int,
                   threads: int | None) -> dict[str, list[float]]:
    """Median seconds per call of each model on ``x``, per alternating round."""
    fns = {name: session_runner(data, x, threads) for name, data in models.items()}
    return alternating_rounds(fns, rounds, calls, warmup=max(1, calls // 20))


def print_latency(models: dict[str, bytes], x: np.ndarray, rounds: int, threads: int | None,
                  batches: dict[int, int] = BATCHES) -> dict[int, dict[str, list[float]]]:
    """Per-round times and ratios to float32, then medians, at each batch size; returns the times."""
    names = [n for n in models if n != "float32"]
    result = {}
    for batch, calls in batches.items():
        xb = np.take(x, np.arange(batch) % len(x), axis=0).astype(np.float32)
        t = latency_rounds(models, xb, rounds, calls, threads)
        result[batch] = t
        print(f"\nbatch {batch} ({calls} call{'s' * (calls > 1)} per turn, {rounds} rounds; time per call, "
              "ratio to float32 in round)")
        for r in range(rounds):
            cells = [f"float32 {_time(t['float32'][r])}"]
            cells += [f"{n} {_time(t[n][r])} ({t[n][r] / t['float32'][r]:.2f}x)" for n in names]
            print(f"  round {r + 1}: " + ", ".join(cells))
        med = [f"float32 {_time(statistics.median(t['float32']))}"]
        med += [f"{n} {_time(statistics.median(t[n]))} "
                f"({statistics.median(q / f for q, f in zip(t[n], t['float32'], strict=True)):.2f}x)" for n in names]
        print("  median:  " + ", ".join(med))
    return result


def _time(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def main(argv: list[str] | None = None) -> int:
    from dnnspec.data import load_data
    from dnnspec.export.onnx_export import to_onnx
    from dnnspec.export.runs import load_source

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", metavar="RUN_DIR", help="a run folder of 'dnnspec train' (or a checkpoint)")
    ap.add_argument("--data", metavar="SOURCE", help="data (default: the spec's)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calibration", type=int, default=DEFAULT_CALIBRATION)
    ap.add_argument("--out", metavar="DIR", help="also keep the three .onnx files here")
    ap.add_argument("--quick", action="store_true", help="3 rounds of fewer calls: check that the script works")
    args = ap.parse_args(argv)
    src = load_source(args.run)
    model = src.net.model
    ds = load_data(args.data, model, batch=1)
    f = to_onnx(model, src.net.params, opset=QDQ_MAX_OPSET).SerializeToString()
    seed = int(model.train.get("seed", 0) or 0)
    models = three_models(f, calibration_sample(ds.x_train, args.calibration, seed))
    print(f"{src.path}: {model.name}, opset {QDQ_MAX_OPSET}, calibration {args.calibration} examples (seed {seed}), "
          f"onnxruntime CPU, {args.threads} intra-op thread(s)")
    with tempfile.TemporaryDirectory(prefix="dnnspec-bq-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in models.items():
            (out / f"{model.name}_{name}.onnx").write_bytes(data)
            acc = (f"test accuracy {accuracy(data, ds.x_test, ds.y_test):.4f} ({len(ds.y_test)} examples)"
                   if ds.x_test is not None and model.task.kind == "classification" else "no test split")
            print(f"  {name:<12} {len(data) / 1e6:6.3f} MB  {acc}")
    x = ds.x_test if ds.x_test is not None else ds.x_train
    rounds = 3 if args.quick else args.rounds
    batches = {1: 20, 1024: 1} if args.quick else BATCHES
    print_latency(models, x, rounds, args.threads, batches)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
