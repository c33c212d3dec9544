"""`dnnspec check`: exit codes, summary, --json, --render, no heavy imports, no tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

from dnnspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPIRALS = str(ROOT / "specs" / "spirals.dnn")


def test_summary_of_spirals(capsys):
    assert main(["check", SPIRALS]) == 0
    out = capsys.readouterr().out
    # 2*64+64, 64*64+64, 64*3+3 by hand
    assert f"trainable params:      {2 * 64 + 64 + 64 * 64 + 64 + 64 * 3 + 3:,}" in out
    assert "dense1" in out and "xavier_normal fan=avg (default)" in out and "he_normal fan=avg (default)" in out
    flops = (2 * 2 * 64 + 64) + 4 * 64 + (2 * 64 * 64 + 64) + 64 + (2 * 64 * 3 + 3) + 4 * 3
    assert f"forward FLOPs/example: {flops:,}" in out
    assert "optimizer: adam lr=0.01" in out and "train:     epochs=200 batch=64" in out


def test_json_and_render(capsys):
    assert main(["check", "--json", SPIRALS]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in d["layers"]][:2] == ["dense1", "tanh1"]
    assert main(["check", "--render", SPIRALS]) == 0
    assert "layers {\n  dense 64 init=xavier_normal" in capsys.readouterr().out


def test_exit_codes_and_all_files_reported(capsys, tmp_path):
    broken = str(ROOT / "specs" / "broken" / "many_errors.dnn")
    assert main(["check", broken, SPIRALS]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("error:") == 6 and "network spirals" in captured.out
    assert main(["check", str(tmp_path / "missing.dnn"), broken]) == 2
    err = capsys.readouterr().err
    assert "missing.dnn: no such file" in err and "many_errors.dnn:4:16" in err
    assert main(["check", str(tmp_path)]) == 2


def _run(args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "dnnspec", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def test_bad_files_give_one_line_never_a_traceback(tmp_path):
    (tmp_path / "garbage.dnn").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "empty.dnn").write_text("")
    (tmp_path / "big.dnn").write_bytes(b"# comment\n" * 1_100_000)
    for name, code in (("garbage.dnn", 2), ("empty.dnn", 1), ("big.dnn", 2), ("nope.dnn", 2)):
        r = _run(["check", str(tmp_path / name)])
        assert r.returncode == code, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.strip()
        if code == 2:
            assert len(r.stderr.strip().splitlines()) == 1


def test_check_imports_no_heavy_modules():
    code = (f"import sys\nfrom dnnspec.cli import main\nrc = main(['check', {SPIRALS!r}])\n"
            "heavy = [m for m in ('onnx', 'onnxruntime', 'matplotlib', 'starlette', 'uvicorn') if m in sys.modules]\n"
            "print('HEAVY', heavy)\nsys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout


def test_render_shows_no_init_option_that_does_nothing(capsys):
    """moons_sgd.dnn has dense 32 init=he_uniform fan=in: std= and limit= would do nothing there."""
    assert main(["check", "--render", str(ROOT / "specs" / "moons_sgd.dnn")]) == 0
    out = capsys.readouterr().out
    assert "  dense 32 init=he_uniform fan=in bias=true name=dense1\n" in out
    assert "std=" not in out.split("layers {")[1].split("}")[0]


MULTILABEL = """input [6]
targets 4
augment {
  mixup alpha=0.2
}
layers {
  dense 4
  sigmoid
}
loss binary_cross_entropy
"""


def test_recipe_lines_show_the_loss_options_and_a_multilabel_task(capsys, tmp_path):
    spec = tmp_path / "tags.dnn"
    spec.write_text(MULTILABEL)
    assert main(["check", str(spec)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "task:      multi-label classification, 4 labels (a yes/no each)" in lines
    assert "loss:      binary_cross_entropy" in lines
    assert "augment:   mixup alpha=0.2 p=1.0" in lines
    spec.write_text(MULTILABEL.replace("targets 4", "classes 4").replace("sigmoid", "softmax")
                    .replace("binary_cross_entropy", "cross_entropy label_smoothing=0.1"))
    assert main(["check", str(spec)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "task:      classification, 4 classes" in lines
    assert "loss:      cross_entropy label_smoothing=0.1" in lines
    spec.write_text(MULTILABEL.replace("sigmoid\n", "").replace("binary_cross_entropy", "mse")
                    .replace("augment {\n  mixup alpha=0.2\n}\n", ""))
    assert main(["check", str(spec)]) == 0
    assert "task:      regression, 4 target(s)" in capsys.readouterr().out.splitlines()
