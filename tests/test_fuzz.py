"""Property tests: random text and mutated valid specs only ever raise SpecError or UsageError."""

import re
import subprocess
import sys
from pathlib import Path

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
