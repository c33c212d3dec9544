"""Property tests: random text and mutated valid specs only ever raise SpecError or UsageError.

The mutants come from tests/spec_mutants.py (also behind bench/fuzz_specs.py, which runs
100,000 of them): truncation at every position, token edits, huge / tiny / NaN numbers,
option values at the edges of their ranges, deep nesting. A mutant that checks OK and is
small is run forward through the engine and must give finite outputs. The whole file
runs in well under a minute.
"""

import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import spec_mutants
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnnspec import frontend
from dnnspec.errors import SpecError, UsageError

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [p.read_text() for p in sorted((ROOT / "specs").glob("*.dnn"))]
TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_][\w-]*|[+-]?\d[\w.%+-]*|\S|\n')
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(text):
    try:
        frontend.parse(text, "fuzz.dnn")
    except (SpecError, UsageError) as e:
        assert str(e)
        if isinstance(e, SpecError):
            assert e.render()


@st.composite
def mutated(draw):
    tokens = TOKEN.findall(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "number", "truncate", "insert"]))
        if op == "delete":
            del tokens[i]
        elif op == "duplicate":
            tokens.insert(i, tokens[i])
        elif op == "swap":
            j = draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif op == "number":
            tokens[i] = str(draw(st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True))))
        elif op == "truncate":
            tokens = tokens[:i]
        else:
            tokens.insert(i, draw(st.sampled_from(["{", "}", "[", "]", "=", ",", "..", "/", "\n", "repeat", "0"])))
        if not tokens:
            break
    return " ".join(tokens)


@SETTINGS
@given(mutated())
def test_mutated_specs_raise_only_project_errors(text):
    _check(text)


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("abdelnrsty_ 019.-/=[]{},\"#%\n\t\r:\x00\ufeff")), max_size=200))
def test_random_text_raises_only_project_errors(text):
    _check(text)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=120))
def test_random_unicode_raises_only_project_errors(text):
    _check(text)


def test_cli_never_prints_a_traceback(tmp_path):
    """A handful of mutated files through the real CLI (a subprocess each would be slow: one run, many files)."""
    import random

    rng = random.Random(0)
    paths = []
    for k in range(40):
        tokens = TOKEN.findall(rng.choice(SEEDS))
        for _ in range(3):
            i = rng.randrange(len(tokens))
            tokens[i:i + 1] = rng.choice([[], [tokens[i]] * 2, ["}"], ["999999999999"], ["-1"], ["x=y"]])
        p = tmp_path / f"m{k}.dnn"
        p.write_text(" ".join(tokens))
        paths.append(str(p))
    r = subprocess.run([sys.executable, "-m", "dnnspec", "check", *paths], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode in (0, 1)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


# --- the mutators of tests/spec_mutants.py ----------------------------------------------


def _no_crash(text, forward=False):
    outcome = spec_mutants.run_mutant(text, forward=forward)
    assert outcome.kind != "crash", f"{outcome.detail}\n--- mutant:\n{text[:2000]}"
    return outcome


@pytest.mark.parametrize("seed", range(len(spec_mutants.SEEDS)))
def test_truncation_at_every_position(seed):
    text = spec_mutants.SEEDS[seed]
    for i in range(len(text) + 1):
        _no_crash(text[:i])


def test_every_number_replaced_by_every_nasty_number():
    """Each number of a CNN spec (sizes, rates, the recipe) in turn becomes each huge, tiny or non-finite value."""
    text = (ROOT / "specs" / "cifar_like_cnn.dnn").read_text()
    tokens = spec_mutants.TOKEN.findall(text)
    numbers = [i for i, t in enumerate(tokens) if spec_mutants.NUMBER.match(t)]
    assert len(numbers) >= 20
    for i in numbers:
        for nasty in spec_mutants.NASTY_NUMBERS:
            _no_crash(" ".join([*tokens[:i], nasty, *tokens[i + 1:]]))


@pytest.mark.parametrize("depth", [31, 32, 33, 245, 490, 5000])
def test_deep_nesting_is_refused_quickly(depth):
    blocks = ("input [4]\nclasses 3\nlayers {\n" + "repeat 1 {\n" * depth + "relu\n" + "}\n" * depth
              + "dense 3\nsoftmax\n}\n")
    lists = "input " + "[" * depth + "2" + "]" * depth + "\nclasses 3\nlayers {\n dense 3\n softmax\n}\n"
    for text in (blocks, lists, blocks[:len(blocks) // 2]):
        start = time.perf_counter()
        _no_crash(text)
        assert time.perf_counter() - start < 1.0


def test_random_mutants_check_or_fail_cleanly_and_run_finite():
    """3,000 seeded mutants: no crash; the small ones that check OK run forward without NaN."""
    rng = random.Random(20261201)
    ran_forward = 0
    for _ in range(3000):
        ran_forward += _no_crash(spec_mutants.mutant(rng), forward=True).forward
    assert ran_forward >= 200  # the forward check really runs


@SETTINGS
@given(st.randoms(use_true_random=False), st.sampled_from(spec_mutants.MUTATORS))
def test_each_mutator_on_each_seed(rng, mutator):
    _no_crash(mutator(rng.choice(spec_mutants.SEEDS), rng), forward=True)


def test_the_oracle_flags_crashes_and_nan(monkeypatch):
    """run_mutant itself: a non-project exception and NaN outputs both count as crashes."""
    mini = "input [4]\nclasses 3\nlayers {\n  dense 3\n  softmax\n}\n"
    assert spec_mutants.run_mutant(mini) == spec_mutants.Outcome("ok", True)
    from dnnspec.engine.net import Net

    monkeypatch.setattr(Net, "forward", lambda self, x, **kw: x[:, :3] * float("nan"))
    assert spec_mutants.run_mutant(mini).detail.startswith("NaN")
    monkeypatch.setattr(spec_mutants.frontend, "parse", lambda *a, **k: 1 / 0)
    assert "ZeroDivisionError" in spec_mutants.run_mutant(mini).detail
