"""examples/lecture_claims.py: the lecture's claims measured; the verdicts come from the numbers."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import dnnspec

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
sys.path.insert(0, str(ROOT / "examples"))
try:
    import lecture_claims as lc
finally:
    sys.path.pop(0)

CELL = re.compile(r"^\d\.\d{4} ± \d\.\d{4}$")
VERDICT = re.compile(r"^(yes|partly|not separable|no|not measured \(a run diverged\)): \S")


# --- the verdict logic, on made-up numbers -------------------------------------------------

@pytest.mark.parametrize("a, b, higher_better, expected", [
    ((0.90, 0.01), (0.80, 0.01), True, ">"),       # 0.10 apart, margin sqrt(2)*0.01
    ((0.80, 0.01), (0.90, 0.01), True, "<"),
    ((0.85, 0.03), (0.83, 0.03), True, "="),       # 0.02 < 0.042: not separable
    ((0.20, 0.01), (0.40, 0.01), False, ">"),      # a loss: lower is better
    ((0.85, 0.0), (0.85, 0.0), True, "="),
    ((math.nan, 0.0), (0.85, 0.0), True, "?"),
])
def test_compare_separates_by_the_combined_std(a, b, higher_better, expected):
    assert lc.compare(a, b, higher_better) == expected


def test_compare_margin_is_the_hypot_of_the_stds():
    # margin sqrt(0.03² + 0.04²) = 0.05: 0.049 apart is within it, 0.051 is not
    assert lc.compare((0.849, 0.03), (0.80, 0.04), True) == "="
    assert lc.compare((0.851, 0.03), (0.80, 0.04), True) == ">"


def test_mean_std_is_the_sample_std_over_finite_values():
    m, s = lc.mean_std([1.0, 2.0, 3.0])
    assert (m, s) == (2.0, 1.0)  # ddof=1: sqrt(((1)² + 0 + (1)²) / 2)
    assert lc.mean_std([0.5]) == (0.5, 0.0)
    assert lc.mean_std([1.0, math.nan, 3.0]) == (2.0, math.sqrt(2.0))
    assert all(math.isnan(v) for v in lc.mean_std([math.nan]))


RANK = lc.ranking("A", "B", "C")


@pytest.mark.parametrize("stats, expected", [
    ({"A": (0.9, 0.01), "B": (0.8, 0.01), "C": (0.7, 0.01)}, "yes: A > B > C"),
    ({"A": (0.9, 0.01), "B": (0.7, 0.01), "C": (0.8, 0.01)}, "no: A > C > B"),
    ({"A": (0.81, 0.02), "B": (0.80, 0.02), "C": (0.7, 0.01)}, "partly: A ≈ B > C"),
    ({"A": (0.81, 0.05), "B": (0.80, 0.05), "C": (0.79, 0.05)}, "not separable: A ≈ B ≈ C"),
    ({"A": (0.80, 0.02), "B": (0.81, 0.02), "C": (0.7, 0.01)}, "partly: B ≈ A > C"),  # order by mean
    ({"A": (math.nan, math.nan), "B": (0.8, 0.0), "C": (0.7, 0.0)}, "not measured (a run diverged): B > C; A diverged"),
])
def test_verdict_of_a_ranking_follows_the_numbers(stats, expected):
    assert lc.verdict(RANK, stats, higher_better=True) == expected


def test_verdict_of_a_lower_is_better_claim_and_of_an_equality():
    loss = {"fast": (0.20, 0.01), "slow": (0.40, 0.01)}
    assert lc.verdict((("fast", ">", "slow"),), loss, higher_better=False) == "yes: fast > slow"
    assert lc.verdict((("slow", ">", "fast"),), loss, higher_better=False) == "no: fast > slow"
    alike = (("p", "=", "q"),)
    assert lc.verdict(alike, {"p": (0.83, 0.01), "q": (0.835, 0.01)}, True) == "yes: q ≈ p"
    assert lc.verdict(alike, {"p": (0.83, 0.01), "q": (0.90, 0.01)}, True) == "no: q > p"


def test_rendered_verdicts_come_from_the_results_given():
    """The same table code says 'yes' or 'no' for (c) as the made-up numbers say."""
    claim = next(c for c in lc.CLAIMS if c.key == "(c)")

    def table(he: float, xavier: float) -> str:
        runs = {("(c)", "He"): [{"accuracy": he + d, "loss": 0.3} for d in (-0.001, 0.001)],
                ("(c)", "Xavier"): [{"accuracy": xavier + d, "loss": 0.3} for d in (-0.001, 0.001)]}
        return lc.render([claim], runs, "caption")

    assert "| yes: He > Xavier |" in table(0.85, 0.80)
    assert "| no: Xavier > He |" in table(0.80, 0.85)
    assert "| not separable: He ≈ Xavier |" in table(0.850, 0.8495)
    assert "0.8500 ± 0.0014" in table(0.85, 0.80)


# --- the specs: only the studied factor changes ---------------------------------------------

def _changed_lines(text: str, base: str) -> set[str]:
    return set(text.splitlines()) ^ set(base.splitlines())


@pytest.mark.parametrize("key, allowed", [
    ("(a)", r"^\s+(dense 128 init=(he|xavier)_normal|elu|leaky_relu|relu|tanh|sigmoid)$"),
    ("(b)", r"^\s+(batchnorm momentum=0\.9|relu|sigmoid|dense 128 init=(he|xavier)_normal)$"),
    ("(c)", r"^\s+dense 128 init=(he|xavier)_normal$"),
    ("(d)", r"^optimizer "),
    ("(e)", r"^\s+dropout 0\.2 mode=(inverted|scale)$"),
])
def test_each_claims_variants_differ_from_the_base_only_in_its_factor(key, allowed):
    base = lc.spec_text({}, epochs=3, seed=1)
    claim = next(c for c in lc.CLAIMS if c.key == key)
    for _, change in claim.variants:
        text = lc.spec_text(change, epochs=3, seed=1)
        assert all(re.match(allowed, line) for line in _changed_lines(text, base)), text
        net = dnnspec.compile(text)  # every variant is a valid spec
        assert net.model.train["seed"] == 1 and net.model.train["epochs"] == 3


def test_bad_flags_are_usage_errors(tmp_path, capsys):
    for argv, words in ((["--seeds", "0"], "--seeds must be at least 1"),
                        (["--blas-threads", "0"], "--blas-threads must be at least 1"),
                        (["--out", str(tmp_path / "no" / "t.md")], "does not exist"),
                        (["--out", str(tmp_path)], "is a folder")):
        with pytest.raises(SystemExit) as exc:
            lc.parse_args(argv)
        assert exc.value.code == 2 and words in capsys.readouterr().err


# --- a tiny real run ----------------------------------------------------------------------

@pytest.mark.skipif(not FASHION.exists(), reason="apt-get install dataset-fashion-mnist")
def test_quick_run_prints_and_writes_a_reproducible_table(tmp_path, capsys):
    argv = ["--quick", "--limit", "256", "--test-limit", "500", "--out", str(tmp_path / "claims.md")]
    first = lc.main(argv)
    again = lc.main(argv)
    assert again["table"] == first["table"]  # same seeds, same numbers
    out = capsys.readouterr().out
    assert first["table"] in out
    assert (tmp_path / "claims.md").read_text(encoding="utf-8") == first["table"]
    assert "256 training images, 500 test images" in first["table"]

    lines = [line for line in first["table"].splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines[1:]]
    assert len(rows) == sum(len(c.variants) for c in lc.CLAIMS) == 16
    assert all(len(r) == 6 and CELL.match(r[2]) and CELL.match(r[3]) for r in rows)
    firsts = [r for r in rows if r[0]]  # the first row of each claim carries its verdict
    assert [r[0].split()[0] for r in firsts] == [c.key for c in lc.CLAIMS]
    assert all(VERDICT.match(r[5]) for r in firsts)
    assert all(not r[4] and not r[5] for r in rows if not r[0])
    # one net, three claims: the ReLU/He/Adam run is shared, so its cells agree
    results = first["results"]
    assert results[("(a)", "ReLU")] == results[("(c)", "He")] == results[("(d)", "Adam")] \
        == results[("(e)", "no dropout")]
    assert len(results[("(a)", "ELU")]) == 2


def test_a_diverging_run_is_recorded_as_nan_not_dropped():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 1, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    text = lc.spec_text({"optimizer": "sgd lr=1e6 momentum=0.9"}, epochs=2, seed=0)
    result = lc.train_one(text, (x, y, x[:8], y[:8]))
    assert math.isnan(result["accuracy"]) and math.isnan(result["loss"])
    assert lc.cell([result, {"accuracy": 0.5, "loss": 1.0}], "accuracy") == "0.5000 ± 0.0000 (1 of 2 diverged)"
    assert lc.cell([result], "loss") == "diverged"
