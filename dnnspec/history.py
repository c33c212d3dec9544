"""What a run folder of ``dnnspec train`` holds: its files' names and the history table.

Written by the trainer (dnnspec.engine.trainer), read by ``dnnspec plot`` (dnnspec.plots),
``dnnspec evaluate`` and ``dnnspec export``: a module of its own below all of them, so that
none of the readers imports the trainer (and with it the engine).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
HISTORY = "history.csv"
SPEC_COPY = "spec.dnn"
CURVES = "curves.png"
EXPORTED = "model.onnx"  # where 'dnnspec export RUN_DIR' writes by default: part of the run
METRICS = "metrics.json"  # the test split's evaluation report (dnnspec.evaluation)
CONFUSION = "confusion.png"
# Every file a run folder holds, the checkpoint first: an overwrite interrupted half-way
# leaves a folder that cannot be resumed as if it were whole.
RUN_FILES = (CHECKPOINT, HISTORY, BEST, SPEC_COPY, CURVES, EXPORTED, METRICS, CONFUSION)
COLUMNS = ("epoch", "lr", "loss", "accuracy", "val_loss", "val_accuracy", "seconds")


@dataclass
class History:
    """Per-epoch rows (``COLUMNS``), the best epoch, whether training stopped early, test metrics.

    ``test``: the headline numbers of ``report`` (the evaluation of the final weights on the
    test split, a dnnspec.evaluation.Report); ``seconds``: wall time of the whole ``fit``.
    """

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    test: dict[str, float] | None = None
    run_dir: str | None = None
    report: Any = None
    seconds: float | None = None

    def __getitem__(self, key: str) -> list[float | None]:
        return [r.get(key) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt_cell(r.get(k)) for k in COLUMNS})
        return out.getvalue()


def _fmt_cell(v: Any) -> str:
    if v is None:
        return ""
    return str(v) if isinstance(v, int) else f"{v:.6g}"


__all__ = ["BEST", "CHECKPOINT", "COLUMNS", "CONFUSION", "CURVES", "EXPORTED", "HISTORY", "METRICS", "RUN_FILES",
           "SPEC_COPY", "History"]
