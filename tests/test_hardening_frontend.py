"""The front end never crashes or hangs, and what `check` accepts `train` can allocate (issue 10, items 3 and 4).

Inputs that used to hang, recurse or overflow end in one clear SpecError, fast; every size
has a range; the training-memory estimate (dnnspec.memory) is checked against the engine's
real allocations and refuses, in `check` and `train` alike, what the machine cannot hold.
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dnnspec import frontend, memory, summary
from dnnspec.cli import main
from dnnspec.errors import SpecError, UsageError

ROOT = Path(__file__).resolve().parent.parent
HEAD = "input [4]\nclasses 3\n"
TAIL = "layers {\n  dense 3\n  softmax\n}\n"


def _messages(text):
    with pytest.raises(SpecError) as info:
        frontend.parse(text, "t.dnn")
    return [d.message for d in info.value.diagnostics]


def _fast_error(text):
    """The first diagnostic of a spec that must fail within a second."""
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        frontend.parse(text, "t.dnn")
    assert time.perf_counter() - start < 1.0
    assert info.value.render().startswith("t.dnn:")
    return info.value.diagnostics[0]


# --- item 3: never a crash, never a hang --------------------------------------------


def test_nested_repeat_product_is_checked_before_expanding():
    d = _fast_error(HEAD + "layers {\n  repeat 1000 {\n    repeat 1000 {\n      repeat 1000 {\n        relu\n"
                    "      }\n    }\n  }\n  dense 3\n  softmax\n}\n")
    assert d.message == "1,000,000,002 layers after expanding repeat blocks; at most 10,000"
    # a count written as 1000.0 is a whole number too: still counted before expanding
    d = _fast_error(HEAD + "layers {\n repeat 1000.0 {\n repeat 1000.0 {\n relu\n }\n }\n dense 3\n softmax\n}\n")
    assert d.message.startswith("1,000,002 layers")


def test_deep_nesting_is_a_syntax_error_not_a_recursion_error():
    blocks = HEAD + "layers {\n" + "repeat 1 {\n" * 245 + "relu\n" + "}\n" * 245 + "dense 3\nsoftmax\n}\n"
    d = _fast_error(blocks)
    assert d.message == "syntax error: more than 32 nested blocks and lists" and d.span.line == 3 + 32
    lists = "input " + "[" * 490 + "2" + "]" * 490 + "\nclasses 3\n" + TAIL
    d = _fast_error(lists)
    assert (d.span.line, d.span.col) == (1, 7 + 32) and "not lists" in d.hint
    # brackets inside strings and comments do not count
    ok = HEAD.replace("classes 3", 'classes "' + "[" * 40 + '", "b", "c"') + "# " + "{" * 40 + "\n" + TAIL
    assert frontend.parse(ok).task.class_names[0] == "[" * 40


@pytest.mark.parametrize("stmt, what", [("optimizer [4]", "optimizer"), ("loss [1]", "loss"),
                                        ("optimizer 3 lr=1", "optimizer"), ("schedule 1..2", "schedule")])
def test_a_list_or_number_where_a_kind_is_expected(stmt, what):
    d = _fast_error(HEAD + TAIL + stmt + "\n")
    assert d.message.startswith(f"'{what}' needs a kind name first, found ")


@pytest.mark.parametrize("value", ["1" + "0" * 400, "1e400", "1" + "0" * 400 + "/7", "9" * 5000,
                                   "1" + "0" * 400 + "/0.5"])
def test_huge_numbers_are_range_errors_not_overflow(value):
    d = _fast_error(HEAD + TAIL + f"optimizer adam lr={value}\n")
    assert d.message.startswith("adam lr: expected a finite number, found ")
    assert len(d.message) < 100  # never 400 digits in a message
    d = _fast_error(HEAD + "layers {\n  dense " + value + "\n  softmax\n}\n")
    assert d.message.startswith("dense units: ")


def test_huge_ranges_and_quantities():
    img = "input image[1, 8, 8]\nclasses 3\naugment {\n  %s\n}\nlayers {\n  flatten\n  dense 3\n  softmax\n}\n"
    assert _fast_error(img % ("scale 1.." + "9" * 400)).message.startswith("scale range: bounds must lie in")
    d = _fast_error(img % ("translate " + "9" * 400 + "px"))
    assert d.message.endswith("found a 400-digit number of px")


def test_100000_class_names_check_in_linear_time():
    names = ", ".join(f'"c{i}"' for i in range(100_000))
    text = f"input [4]\nclasses {names}\nlayers {{\n  dense 100000\n  softmax\n}}\n"
    assert 700_000 < len(text) < 1_000_000
    start = time.perf_counter()
    assert frontend.parse(text).task.classes == 100_000
    assert time.perf_counter() - start < 5.0  # 57 s before; about 1 s on the project's 2-core machine
    dup = text.replace('"c99999"', '"c5"')
    start = time.perf_counter()
    with pytest.raises(SpecError, match="duplicate class name 'c5'"):
        frontend.parse(dup)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("stmt", ["normalize mean=0 std=1e-320", "normalize mean=0 std=1e-7",
                                  "normalize mean=1e300 std=1", "normalize mean=[0, 0, 0, 1e7] std=1"])
def test_normalize_values_that_break_float32_are_refused(stmt):
    d = _fast_error(HEAD.replace("classes", stmt + "\nclasses") + TAIL)
    assert d.message.startswith("normalize ")


@pytest.mark.parametrize("opt", ["scale=1e-320", "scale=1e300", "scale=1/0"])
def test_input_scale_range(opt):
    assert _fast_error(f"input [4] {opt}\nclasses 3\n" + TAIL).message.startswith("input scale: ")


def test_parser_is_safe_from_two_threads():
    """One shared inline transformer: the lock keeps each file's spans its own."""
    texts = {f"f{i}.dnn": HEAD + TAIL for i in range(2)}
    seen = []

    def work(path):
        for _ in range(30):
            m = frontend.parse(texts[path], path)
            seen.append(m.layers[0].span.file == path)

    threads = [threading.Thread(target=work, args=(p,)) for p in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 60 and all(seen)


def test_at_most_50_errors_are_listed():
    text = "".join(f"bogus{i} 1\n" for i in range(500))
    with pytest.raises(SpecError) as info:
        frontend.parse(text, "t.dnn")
    diags = info.value.diagnostics
    assert len(diags) == 51 and diags[-1].message.endswith("more errors not shown")


# --- item 4: sizes have ranges; memory is checked --------------------------------------


@pytest.mark.parametrize("layer, message", [
    ("dense 99999999999999999999999999", "dense units: must be at most 1,000,000"),
    ("conv2d 2000000", "conv2d filters: must be at most 1,000,000"),
    ("conv2d 4 kernel=5000", "conv2d kernel: must be at most 4,096"),
    ("conv2d 4 stride=[1, 5000]", "conv2d stride: must be at most 4,096"),
    ("conv2d 4 padding=5000", "conv2d padding: must be at most 4,096"),
    ("maxpool 9999", "maxpool kernel: must be at most 4,096"),
    ("avgpool 2 padding=[1, 99999]", "avgpool padding: must be at most 4,096"),
    ("dense 4 init=normal std=1e30", "dense std: must be in (0, 10]"),
    ("leaky_relu alpha=1e30", "leaky_relu alpha: must be in [0, 10]"),
    ("batchnorm eps=1e-320", "batchnorm eps: must be in [1e-10, 1]"),
])
def test_every_size_has_a_range(layer, message):
    text = f"input image[1, 8, 8]\nclasses 3\nlayers {{\n  {layer}\n  flatten\n  dense 3\n  softmax\n}}\n"
    assert _fast_error(text).message.startswith(message)


@pytest.mark.parametrize("op, message", [
    ("crop 100000", "crop padding: must be at most 4,096"),
    ("crop 99999999999999999999999", "crop padding: must be at most 4,096"),
    ("crop 9", "crop padding of 9 pixels is larger than the image (8x8)"),
    ("translate 9px", "translate amount of 9 pixels is larger than the image (8x8)"),
    ("translate 1e300px", "translate takes at most 1 value"),  # 1e300 then the name px: no exponent in 2px
])
def test_augment_sizes_are_bounded(op, message):
    text = f"input image[1, 8, 8]\nclasses 3\naugment {{\n  {op}\n}}\nlayers {{\n  flatten\n  dense 3\n  softmax\n}}\n"
    assert _fast_error(text).message.startswith(message)
    ok = text.replace(op, "crop 8\n  translate 8px")
    assert [s.kind for s in frontend.parse(ok).augment] == ["crop", "translate"]


def test_input_sizes_and_recipe_counts_have_ranges():
    assert _fast_error("input image[1, 2000000, 8]\nclasses 3\n" + TAIL).message.startswith(
        "input shape: must be at most 1,000,000")
    assert _fast_error(HEAD + TAIL + "train epochs=10000000\n").message.startswith("train epochs: must be at most")
    assert _fast_error("input [4]\ntargets 2000000\n" + TAIL).message.startswith("targets: must be at most")


def test_memory_estimate_of_an_mlp_by_hand():
    """784-256-10 with Adam at batch 32: each term of the documented formula, counted by hand."""
    m = frontend.parse("input [784]\nclasses 10\nlayers {\n  dense 256\n  relu\n  dense 10\n  softmax\n}\n"
                       "train batch=32\n")
    est = memory.estimate(m)
    n, e = 32, 2048
    params = 784 * 256 + 256 + 256 * 10 + 10
    # weights, gradient, best copy, Adam's m and s, two optimizer scratch arrays
    assert est.params == 4 * 7 * params
    # input: 2 arrays at the eval batch; dense: y (fwd) and dx (bwd, the input's size);
    # relu: y (fwd), mask (a quarter) and dx (bwd); softmax: y and dx
    acts = 2 * 784 * e + (256 * e + 784 * n) + (256 * e + 320 * n) + (10 * e + 256 * n) + (10 * e + 10 * n)
    assert est.activations == 4 * acts
    assert est.largest.name == "input"  # 2 x 784 floats per example at the eval batch of 2048



def test_memory_estimate_counts_mixings_two_batch_copies():
    """mixup/cutmix keep the mixed batch and its shuffled partner: 2 input-sized arrays per example,
    for vectors (mixup alone) and on top of the per-image ops' buffers for images."""
    mlp = "input [784]\nclasses 10\n{aug}layers {{\n  dense 10\n  softmax\n}}\ntrain batch=32\n"
    plain, mixed = (memory.estimate(frontend.parse(mlp.format(aug=a)))
                    for a in ("", "augment {\n  mixup alpha=0.2\n}\n"))
    assert mixed.total - plain.total == 4 * 32 * 2 * 784
    img = ("input image[1, 8, 8]\nclasses 2\naugment {{\n  flip horizontal\n{mix}}}\n"
           "layers {{\n  flatten\n  dense 2\n  softmax\n}}\ntrain batch=16\n")
    flips, both = (memory.estimate(frontend.parse(img.format(mix=m))) for m in ("", "  cutmix alpha=1.0\n"))
    assert both.total - flips.total == 4 * 16 * 2 * 64

def _engine_bytes(model, n, e):
    """Bytes the engine really holds after a training step at n and an evaluation at e."""
    from dnnspec.engine.net import Net
    from dnnspec.engine.optim import make_optimizer

    net = Net(model, seed=0)
    opt = make_optimizer(model.optimizer, net.params, net.trainable)
    rng = np.random.default_rng(0)
    x = rng.random((n, *model.input.shape), dtype=np.float32)
    _, grads = net.loss_and_grads(x, rng.integers(0, model.task.classes, n), rng=rng)
    opt.step(net.params, grads)
    net.evaluate(rng.random((e, *model.input.shape), dtype=np.float32), rng.integers(0, model.task.classes, e),
                 batch=e)
    scratch = sum(a.nbytes for op in net.ops for a in op.buf._arrays.values())
    arrays = sum(a.nbytes for a in net.params.values()) + sum(a.nbytes for a in net.grads.values())
    state = sum(b.nbytes for b in opt._flat.values()) + opt._tmp_flat.nbytes + opt._sq_flat.nbytes
    return scratch + arrays + state + sum(a.nbytes for a in net.params.values())  # + the best-epoch copy


@pytest.mark.parametrize("spec", [
    "input image[3, 16, 16]\nclasses 4\nlayers {\n  conv2d 8 kernel=3 padding=same\n  batchnorm\n  relu\n"
    "  maxpool 2\n  conv2d 16 kernel=3\n  leaky_relu\n  avgpool 2\n  flatten\n  dense 10\n  dropout 0.2\n"
    "  dense 4\n  softmax\n}\ntrain batch=64\n",
    "input [300]\nclasses 4\nlayers {\n  dense 128\n  batchnorm\n  elu\n  dense 64\n  tanh\n  dense 4\n"
    "  softmax\n}\ntrain batch=128\n",
])
def test_memory_estimate_bounds_what_the_engine_allocates(spec):
    """The estimate is at least what the engine holds and at most about twice it."""
    m = frontend.parse(spec)
    real = _engine_bytes(m, m.train["batch"], memory.eval_batch(m))
    est = memory.estimate(m).total
    assert real <= est <= 2.2 * real, (real, est)


def test_evaluation_chunks_shrink_to_fit_the_limit(monkeypatch):
    """Evaluation chunks keep their forward scratch within EVAL_SCRATCH, and within a quarter of the limit:
    a network whose 2048-row evaluation would not fit is evaluated in smaller chunks, not refused."""
    from dnnspec.engine import trainer
    from dnnspec.engine.net import Net

    spec = ("input image[3, 32, 32]\nclasses 10\nlayers {\n  conv2d 64 kernel=3 padding=same\n  relu\n"
            "  flatten\n  dense 10\n  softmax\n}\ntrain batch=32\n")
    monkeypatch.setenv(memory.ENV, "16GiB")
    m = frontend.parse(spec)
    per_row = memory.BYTES * memory._forward_elements(m)
    assert memory.eval_batch(m) == memory.EVAL_SCRATCH // per_row < memory.EVAL_BATCH  # the pass's own budget
    monkeypatch.setenv(memory.ENV, "512MiB")
    rows = memory.eval_batch(m)
    assert 32 <= rows < memory.EVAL_SCRATCH // per_row
    assert rows * per_row <= 2**29 // 4
    m = frontend.parse(spec)  # accepted at 512 MiB: its evaluation chunks shrink
    net = Net(m, seed=0)
    calls = []
    real = net.evaluate
    monkeypatch.setattr(net, "evaluate", lambda x, y, batch: calls.append(len(x)) or real(x, y, batch=batch))
    x = np.random.default_rng(0).normal(size=(rows + 5, 3, 32, 32)).astype(np.float32)
    trainer.evaluate(net, x, np.zeros(rows + 5, dtype=np.int64))
    assert calls == [rows, 5]


@pytest.mark.parametrize("text, limit", [("16GiB", 16 * 2**30), ("512MB", 512 * 10**6), ("2e9", 2 * 10**9),
                                         (" 1 gib ", 2**30), ("off", None), ("0", None)])
def test_memory_limit_setting(text, limit, monkeypatch):
    assert memory.parse_size(text) == limit
    monkeypatch.setenv(memory.ENV, text)
    assert memory.limit()[0] == limit


def test_bad_memory_limit_setting_is_a_usage_error(monkeypatch):
    monkeypatch.setenv(memory.ENV, "lots")
    with pytest.raises(UsageError, match="DNNSPEC_MEMORY_LIMIT='lots' is not a size"):
        frontend.parse(HEAD + TAIL)


def test_default_limit_is_the_machines_memory(monkeypatch):
    monkeypatch.delenv(memory.ENV, raising=False)
    cap, source = memory.limit()
    assert cap >= 2**28 and "memory" in source


BIG = "input [100000]\nclasses 3\nlayers {\n  dense 100000\n  relu\n  dense 3\n  softmax\n}\n"


def test_memory_refusal_names_the_amount_and_the_layer(monkeypatch):
    monkeypatch.setenv(memory.ENV, "16GiB")
    d = _fast_error(BIG)
    assert d.message.startswith("training this network needs about 261 GiB of memory at batch 32, more than the "
                                "16 GiB of the limit DNNSPEC_MEMORY_LIMIT=16GiB; the largest part is layer dense1")
    assert d.span.line == 4 and "261 GiB" in d.hint
    assert frontend.parse(BIG, check_memory=False).layers[0].name == "dense1"
    monkeypatch.setenv(memory.ENV, "off")
    assert frontend.parse(BIG).layers[0].name == "dense1"


def _cli(args, tmp_path, env_limit="16GiB"):
    import os

    env = {**os.environ, memory.ENV: env_limit}
    return subprocess.run([sys.executable, "-m", "dnnspec", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=env)


def test_check_and_train_refuse_what_does_not_fit(tmp_path):
    (tmp_path / "big.dnn").write_text(BIG)
    (tmp_path / "crop.dnn").write_text("input image[1, 28, 28]\nclasses 3\naugment {\n  crop 100000\n}\n"
                                       "layers {\n  flatten\n  dense 3\n  softmax\n}\n")
    (tmp_path / "dense.dnn").write_text(HEAD + "layers {\n  dense 99999999999999999999999999\n  softmax\n}\n")
    r = _cli(["check", "big.dnn", "crop.dnn", "dense.dnn"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "big.dnn:4:3: error: training this network needs about 261 GiB" in r.stderr
    assert "crop.dnn:4:8: error: crop padding: must be at most 4,096, found 100000" in r.stderr
    assert "dense.dnn:4:9: error: dense units: must be at most 1,000,000" in r.stderr
    r = _cli(["train", "big.dnn", "--out", "run"], tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "needs about 261 GiB" in r.stderr
    assert not (tmp_path / "run").exists()


def test_check_summary_shows_training_memory(capsys, monkeypatch):
    monkeypatch.setenv(memory.ENV, "16GiB")
    assert main(["check", str(ROOT / "specs" / "spirals.dnn")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("training memory:"))
    est = memory.estimate(frontend.load(ROOT / "specs" / "spirals.dnn"))
    assert f"about {memory.fmt_bytes(est.total)} at batch 64" in line


def test_fmt_bytes():
    assert [memory.fmt_bytes(n) for n in (0, 1023, 1024, 1536 * 2**20, 3 * 2**40, 10**30)] == [
        "0 B", "1023 B", "1 KiB", "1.5 GiB", "3 TiB", "867,361,737,988 EiB"]


# --- item 9: render shows no init option that does nothing --------------------------


def test_render_shows_init_options_only_where_they_act():
    m = frontend.load(ROOT / "specs" / "moons_sgd.dnn")  # dense 32 init=he_uniform fan=in
    out = summary.render(m)
    line = next(x for x in out.splitlines() if "he_uniform" in x)
    assert "std=" not in line and "limit=" not in line and "fan=in" in line
    text = "input [3]\ntargets 2\nlayers {\n  dense 4 init=normal std=0.2\n  dense 4 init=uniform limit=0.3\n" \
           "  dense 2 init=zeros\n}\n"
    lines = summary.render(frontend.parse(text)).splitlines()
    normal, uniform, zeros = (next(x for x in lines if f"init={k}" in x) for k in ("normal", "uniform", "zeros"))
    assert "std=0.2" in normal and "limit=" not in normal and "fan=" not in normal
    assert "limit=0.3" in uniform and "std=" not in uniform and "fan=" not in uniform
    assert "std=" not in zeros and "limit=" not in zeros and "fan=" not in zeros
    again = frontend.parse(summary.render(m))
    strip = lambda mm: json.loads(mm.to_json())["layers"]  # noqa: E731
    assert [(x["name"], x["options"]) for x in strip(again)] == [(x["name"], x["options"]) for x in strip(m)]


def test_init_options_that_do_nothing_are_errors():
    errs = _messages(HEAD + "layers {\n  dense 3 init=he_uniform std=0.1 limit=0.2\n  softmax\n}\n")
    assert errs == ["std= does nothing with init=he_uniform", "limit= does nothing with init=he_uniform"]


def test_a_batch_override_is_memory_checked(tmp_path, monkeypatch, capsys):
    """`train --batch N` is checked like the spec's own batch: one line, exit 2, before any data is read."""
    from dnnspec.cli import main

    spec = tmp_path / "s.dnn"
    spec.write_text("data spirals\ninput [2]\nclasses 3\nlayers {\n  dense 4096\n  relu\n  dense 3\n  softmax\n}\n"
                    "train batch=32\n")
    monkeypatch.setenv(memory.ENV, "1GiB")
    assert main(["check", str(spec)]) == 0
    capsys.readouterr()
    assert main(["train", str(spec), "--batch", "1000000", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dnnspec: error: --batch 1000000: training s needs about ") and "\n" not in err
    assert err.endswith("use a smaller --batch") and "of the limit DNNSPEC_MEMORY_LIMIT=1GiB" in err
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_from_a_bigger_machine_still_loads(tmp_path, monkeypatch):
    """The memory limit guards training; a stored spec over this machine's limit still loads for export."""
    from dnnspec import api
    from dnnspec.engine.net import Net

    net = Net(frontend.parse("input [64]\nclasses 3\nlayers {\n  dense 512\n  relu\n  dense 3\n  softmax\n}\n"),
              seed=0)
    path = tmp_path / "m.npz"
    net.save(path)
    monkeypatch.setenv(memory.ENV, "1MB")
    assert api.load(path).params["dense1.kernel"].shape == (64, 512)
