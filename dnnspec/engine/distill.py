"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns from a teacher's soft targets.

    d = Distiller("teacher.onnx", temperature=4.0, weight=0.9)
    fit(student, x, y, teacher=d)          # or teacher="teacher.onnx" for the defaults

The loss on the student's logits z (N, K), with labels y (N,), the teacher's logits v
(N, K) for the same (augmented) batch, temperature T > 0 and distillation weight A in [0, 1]:

    p = softmax(z),  p^T = softmax(z / T),  q^T = softmax(v / T)
    L = (1 - A) * mean_n CE(y_n, p_n)  +  A * T^2 * mean_n KL(q^T_n || p^T_n)
    KL(q || p) = sum_k q_k (log q_k - log p_k)
    dL/dz = (1 - A) * (p - onehot(y)) / N  +  A * T * (p^T - q^T) / N

The T^2 keeps the soft term's gradient on the same scale whatever T (d KL / dz carries a
1/T). The hard term is the student's own loss function (softmax cross-entropy), so A = 0
is exactly ordinary training. The soft term is computed in float64 (N*K values: cheap).

Teacher logits: an ONNX teacher's ``logits`` output when it has one (``dnnspec export
--logits``); otherwise log of its ``probabilities``. log p = v - logsumexp(v) differs from
the logits by a constant per row, and softmax((v - c) / T) = softmax(v / T), so the soft
targets are exactly the same; a probability that underflowed to 0 is taken as the smallest
normal float32 (log = -87.3), below which it could not have been stored anyway.

With mixup or cutmix (dnnspec.augment.Mixer) the trainer binds the batch's mix into the
student's loss (``net.loss_fn``, ``mix=``) before the Distiller takes it as ``hard``: the
teacher sees the mixed batch, the hard term uses the mixed labels, and the soft term the
teacher's logits for the mixed inputs.

Only the teacher path imports onnxruntime.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from ..errors import CheckpointError, DataError, UsageError

DEFAULT_TEMPERATURE = 4.0
DEFAULT_WEIGHT = 0.9
_TINY = float(np.finfo(np.float32).tiny)


# --- the loss ----------------------------------------------------------------------------


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Rows of z (N, K) -> log softmax, float64: z - max - log sum exp(z - max) (no overflow)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def soft_loss(z: np.ndarray, z_teacher: np.ndarray, temperature: float,
              grad: bool = True) -> tuple[float, np.ndarray | None]:
    """T^2 mean_n KL(softmax(v_n/T) || softmax(z_n/T)) and its gradient T (p^T - q^T) / N, float64 (N, K).

    z, z_teacher: (N, K) finite logits of the student and the teacher.
    """
    t = float(temperature)
    log_p = log_softmax(np.asarray(z, np.float64) / t)
    log_q = log_softmax(np.asarray(z_teacher, np.float64) / t)
    q = np.exp(log_q)
    n = z.shape[0]
    loss = t * t * float(np.sum(q * (log_q - log_p))) / n
    if not grad:
        return loss, None
    return loss, (np.exp(log_p) - q) * (t / n)


def distill_loss(z: np.ndarray, y: np.ndarray, z_teacher: np.ndarray, temperature: float, weight: float,
                 hard: Callable[..., tuple[float, np.ndarray | None]] | None = None,
                 out: np.ndarray | None = None, grad: bool = True) -> tuple[float, np.ndarray | None]:
    """(1 - A) hard(z, y) + A T^2 KL(q^T || p^T): (mean loss, dlogits (N, K) in z's dtype).

    ``hard``: the student's own loss on logits (default softmax cross-entropy), with the
    signature of :mod:`dnnspec.engine.losses`; ``out`` is handed to it. A = 0 returns its
    result untouched, bit for bit.
    """
    if hard is None:
        from .losses import softmax_cross_entropy as hard
    a = float(weight)
    loss, d = hard(z, y, out=out, grad=grad)
    if a == 0.0:
        return loss, d
    soft, ds = soft_loss(z, z_teacher, temperature, grad)
    loss = (1.0 - a) * loss + a * soft
    if grad:
        d *= d.dtype.type(1.0 - a)
        d += (a * ds).astype(d.dtype, copy=False)
    return loss, d


# --- the teacher -------------------------------------------------------------------------


class OnnxTeacher:
    """A teacher exported to ONNX, run by onnxruntime: raw batch (N, *input_shape) -> logits (N, K) float32.

    Reads the ``logits`` output when the model has one, else takes log of ``probabilities``
    (see the module doc). ``classes`` is K, or None when the model leaves it symbolic.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        from ..export.predictor import Predictor

        self.predictor = p = Predictor(path, threads=threads)  # checks the file and its one input
        p.session = _quiet_session(p.path, threads)
        self.path = p.path
        outputs = {o.name: o for o in p.session.get_outputs()}
        if "logits" in outputs:
            self.output, self.from_probabilities = "logits", False
        elif "probabilities" in outputs:
            self.output, self.from_probabilities = "probabilities", True
        else:
            raise UsageError(f"{self.path}: --teacher needs a model with a 'logits' or 'probabilities' output, this "
                             f"one has {', '.join(repr(n) for n in outputs)}; export the teacher with "
                             f"'dnnspec export RUN --logits'")
        if p.fixed_batch is not None:
            raise UsageError(f"{self.path}: the teacher's batch axis is fixed at {p.fixed_batch}; export it with a "
                             f"symbolic batch axis (dnnspec export does) so it can run every training batch")
        shape = outputs[self.output].shape
        width = shape[-1] if shape and len(shape) == 2 else None
        self.classes = width if isinstance(width, int) and width > 0 else None
        self.input_shape = p.input_shape

    def check(self, model: Any) -> None:
        """UsageError (one line) unless the student ``model`` takes the same inputs and has as many classes."""
        want = tuple(model.input.shape)
        if len(self.input_shape) != len(want) or any(d >= 0 and d != w for d, w in zip(self.input_shape, want)):
            raise UsageError(f"{self.path}: the teacher takes inputs of shape {_dims(self.input_shape)} but the "
                             f"student {model.path} takes {_dims(want)}; distil into a student with the same input")
        k = student_classes(model)
        if self.classes is not None and self.classes != k:
            raise UsageError(f"{self.path}: the teacher outputs {self.classes} classes but the student "
                             f"{model.path} has {k}; teacher and student must classify the same classes")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Raw (N, *input_shape) -> logits (N, K) float32 (or log probabilities: equal up to a row constant)."""
        p = self.predictor
        xin = p.prepare(x, "the training batch")
        try:
            v = p.session.run([self.output], {p.input_name: xin})[0]
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise DataError(f"{self.path}: onnxruntime could not run the teacher on a training batch of shape "
                            f"{xin.shape}: {first}") from None
        if self.from_probabilities:
            v = np.log(np.maximum(v, _TINY))
        return v


def _quiet_session(path: Any, threads: int | None) -> Any:
    """An onnxruntime CPU session whose idle workers sleep rather than spin.

    The student's step runs on the same cores right after every teacher call, and spinning
    workers would take them from it (measured on 2 busy cores, a CNN teacher and an MLP
    student, batch 64: median CPU time of 47 steps 0.17-0.22 s sleeping, 0.32-0.36 s spinning).
    """
    import onnxruntime as ort

    from ..export.predictor import session_options

    opts = session_options(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def student_classes(model: Any) -> int:
    """K, the width of the student's logits (its last layer's output)."""
    return int(model.output_shape[-1])


def check_student(model: Any) -> None:
    """UsageError unless ``model`` is a classifier ending in softmax trained with cross_entropy."""
    last = model.layers[-1].kind if model.layers else "nothing"
    if model.loss.kind != "cross_entropy" or last != "softmax":
        raise UsageError(f"{model.path}: distillation (--teacher) needs a classifier that ends in softmax with "
                         f"loss cross_entropy; this spec ends in {last} with loss {model.loss.kind}")


# --- the distiller: what fit(teacher=...) uses -------------------------------------------


class Distiller:
    """A teacher (an ONNX path, an OnnxTeacher, or any callable raw batch -> logits (N, K)), T and A.

    ``loss_and_grads(net, x, y, rng)`` is ``net.loss_and_grads`` with :func:`distill_loss`
    on the teacher's logits for ``x``: the trainer calls it with the batch the student
    trains on, after augmentation.
    """

    def __init__(self, teacher: Any, temperature: float = DEFAULT_TEMPERATURE, weight: float = DEFAULT_WEIGHT,
                 threads: int | None = None):
        t, a = float(temperature), float(weight)
        if not (math.isfinite(t) and t > 0):
            raise UsageError(f"--temperature must be a positive number, found {temperature}")
        if not 0.0 <= a <= 1.0:
            raise UsageError(f"--distill-weight must be in [0, 1] (0: labels only, 1: soft targets only), "
                             f"found {weight}")
        if isinstance(teacher, (str, os.PathLike)):
            teacher = OnnxTeacher(teacher, threads)
        if not callable(teacher):
            raise UsageError(f"teacher must be an ONNX file or a callable batch -> logits, found {type(teacher)}")
        self.teacher, self.temperature, self.weight = teacher, t, a

    def check(self, model: Any) -> None:
        """The student must be a softmax + cross_entropy classifier that fits the teacher (UsageError)."""
        check_student(model)
        if hasattr(self.teacher, "check"):
            self.teacher.check(model)

    def teacher_logits(self, x: np.ndarray, k: int) -> np.ndarray:
        """The teacher's (N, K) logits for the raw batch ``x``; DataError if their shape is wrong or not finite."""
        v = np.asarray(self.teacher(x))
        if v.shape != (len(x), k):
            raise DataError(f"{self.name}: the teacher gave logits of shape {v.shape} for a batch of {len(x)}; "
                            f"the student needs ({len(x)}, {k}): teacher and student must classify the same classes")
        if not np.isfinite(v).all():
            raise DataError(f"{self.name}: the teacher gave NaN or infinite outputs on a training batch; "
                            f"check the teacher model (dnnspec predict {self.name} on the data)")
        return v

    def loss_and_grads(self, net: Any, x: np.ndarray, y: np.ndarray,
                       rng: np.random.Generator | None = None) -> tuple[float, dict[str, np.ndarray]]:
        """``net.loss_and_grads(x, y, rng)`` with the distillation loss on this batch's teacher logits."""
        v = self.teacher_logits(x, student_classes(net.model))
        hard = net.loss_fn
        # Net fuses its head with ``net.loss_fn``: swapping it for this call is the whole hook, and
        # evaluation (validation loss) keeps the plain cross-entropy.
        net.loss_fn = partial(distill_loss, z_teacher=v, temperature=self.temperature, weight=self.weight, hard=hard)
        try:
            return net.loss_and_grads(x, y, rng)
        finally:
            net.loss_fn = hard

    @property
    def name(self) -> str:
        return str(getattr(self.teacher, "path", "the teacher"))

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records, so that a resume distils the same way."""
        return {"teacher": self.name, "temperature": self.temperature, "weight": self.weight}


def make_distiller(teacher: Any, model: Any) -> Distiller | None:
    """``fit(teacher=...)``: None, a Distiller, an ONNX path or a callable -> a checked Distiller (or None)."""
    if teacher is None:
        return None
    d = teacher if isinstance(teacher, Distiller) else Distiller(teacher)
    d.check(model)
    return d


def check_resume(saved: dict[str, Any] | None, distiller: Distiller | None, path: str) -> None:
    """CheckpointError when a resume would distil differently from the run it continues (flags named)."""
    now = distiller.describe() if distiller is not None else None
    if saved is None and now is None:
        return
    if saved is None:
        raise CheckpointError(f"{path}: this run was trained without --teacher; resume it without --teacher "
                              f"(or start a distilled run with --overwrite)")
    flags = (f"--teacher {saved['teacher']} --temperature {saved['temperature']:g} "
             f"--distill-weight {saved['weight']:g}")
    if now is None or (now["temperature"], now["weight"]) != (saved["temperature"], saved["weight"]):
        raise CheckpointError(f"{path}: this run was distilled with {flags}; resume it with the same flags")


__all__ = ["DEFAULT_TEMPERATURE", "DEFAULT_WEIGHT", "Distiller", "OnnxTeacher", "check_resume", "check_student",
           "distill_loss", "log_softmax", "make_distiller", "soft_loss", "student_classes"]
