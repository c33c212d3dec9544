"""dnnspec search: spaces in the language, candidate checks, parallel trials, halving, resume (docs/search.md).

The golden errors of search constructs are in specs/broken/search_*.dnn (test_frontend runs them).
Trials train a tiny MLP on 200 spirals examples for 1-2 epochs.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from dnnspec import frontend
from dnnspec.cli import main
from dnnspec.errors import SpecError, UsageError
from dnnspec.search import runner, space

ROOT = Path(__file__).resolve().parent.parent

TINY = """\
network tiny
data spirals
input [2]
classes 3
budget params=1000
layers {
  dense choice(8, 16, 64)
  choose {
    tanh
    seq {
      relu
      dropout uniform(0.1, 0.2)
    }
    none
  }
  dense choice(3, 4)
  softmax
}
optimizer adam lr=choice(0.03, 0.01)
train epochs=2 batch=64 validation=0.2 seed=0
"""

SMALL = """\
network small
data spirals
input [2]
classes 3
layers {
  dense choice(8, 16)
  tanh
  dense 3
  softmax
}
optimizer adam lr=choice(0.03, 0.003)
train epochs=2 batch=64 validation=0.2 seed=0
"""


def _spec(tmp_path: Path, text: str, name: str = "space.dnn") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _board(out: Path) -> list[list[str]]:
    with open(out / "leaderboard.csv", newline="") as f:
        return list(csv.reader(f))


def _search(spec: str, out: Path, *flags: str) -> int:
    return main(["search", spec, "--out", str(out), "--limit", "200", *flags])


# --- the space ------------------------------------------------------------------------


def test_space_dimensions_and_expansion():
    sp = space.read(TINY, "t.dnn")
    assert [d.kind for d in sp.dims] == ["choice", "choose", "uniform", "choice", "choice"]
    assert sp.size is None  # uniform is continuous
    assert sp.budget == {"params": 1000.0}
    text = sp.expand((1, 1, 0.15, 0, 1))
    assert "dense 16" in text and "relu" in text and "dropout 0.15" in text and "lr=0.01" in text
    assert "tanh" not in text and "budget" not in text and "choose" not in text
    assert text.count("\n") == TINY.count("\n")  # line numbers kept
    plain = sp.expand((0, 2, 0.15, 0, 0))  # 'none': no activation, and its dropout gone too
    assert "dropout" not in plain and "tanh" not in plain and "relu" not in plain
    frontend.parse(plain, "t.dnn")  # a plain spec the normal front end takes


def test_random_candidates_depend_only_on_seed_and_index():
    sp = space.read(TINY, "t.dnn")
    assert sp.sample(5, 3) == sp.sample(5, 3)
    assert runner.pick(sp, "random", 6, 5)[3] == (3, sp.sample(5, 3))
    assert sp.sample(5, 3) != sp.sample(6, 3)


def test_check_and_train_refuse_a_search_space(tmp_path, capsys):
    spec = _spec(tmp_path, SMALL)
    assert main(["check", spec]) == 1
    err = capsys.readouterr().err
    assert "this is a search space (4 candidates)" in err and "dnnspec search" in err
    assert main(["train", spec]) == 1
    assert "dnnspec search" in capsys.readouterr().err


def test_grid_refuses_continuous_ranges():
    with pytest.raises(UsageError, match="grid search needs finite choices, found uniform"):
        runner.pick(space.read(TINY, "t.dnn"), "grid", 10, 0)


def test_search_construct_errors_point_at_the_line():
    with pytest.raises(SpecError) as info:
        space.read("input [2]\nlayers {\n  dense int(4, 2)\n}\n", "t.dnn")
    d = info.value.diagnostics[0]
    assert (d.span.line, d.span.col, d.message) == (3, 9, "int(4, 2): lo must be below hi")


# --- checking every candidate before training -----------------------------------------


def test_candidate_count_and_invalid_report():
    # a finite grid: 3 widths * 3 activations * 2 output widths * 2 rates = 36 points
    text = TINY.replace("uniform(0.1, 0.2)", "0.1").replace("params=1000", "params=300")
    sp = space.read(text, "t.dnn")
    picked = runner.pick(sp, "grid", 10, 0)
    assert len(picked) == 36
    cands = runner.check_all(sp, picked)
    assert len(cands) == 36
    # 18 with 4 outputs fail on shapes; of the rest, width 64 has 2*64+64 + 64*3+3 = 387 > 300 parameters
    assert runner.check_report(cands, len(picked)) == [
        "36 candidates, 24 invalid",
        "  18 x 16:3: the network outputs 4 values, but there are 3 classes",
        "  6 x budget: more than params=300 parameters"]
    assert {c.params for c in cands if c.problem and c.problem.startswith("budget")} == {387}


def test_budget_makes_candidates_invalid():
    sp = space.read(SMALL.replace("network small", "network small\nbudget params=100"), "t.dnn")
    cands = runner.check_all(sp, runner.pick(sp, "grid", 10, 0))
    # dense 8: 2*8+8 + 8*3+3 = 51 parameters; dense 16: 48+51 = 99 -> both fit; 100 is the limit
    assert all(c.problem is None for c in cands)
    sp = space.read(SMALL.replace("network small", "network small\nbudget params=60"), "t.dnn")
    cands = runner.check_all(sp, runner.pick(sp, "grid", 10, 0))
    assert [c.params for c in cands if c.problem] == [99, 99]
    assert runner.check_report(cands, 4)[1] == "  2 x budget: more than params=60 parameters"


def test_no_valid_candidate_stops_before_training(tmp_path, capsys):
    spec = _spec(tmp_path, SMALL.replace("dense 3\n", "dense 5\n"))
    assert _search(spec, tmp_path / "out", "--strategy", "grid") == 1
    out, err = capsys.readouterr()
    assert "4 candidates, 4 invalid" in out and "no valid candidate" in err
    assert not (tmp_path / "out").exists()


# --- trials ---------------------------------------------------------------------------


def test_leaderboard_is_the_same_for_one_and_two_workers(tmp_path, capsys):
    spec = _spec(tmp_path, SMALL)
    assert _search(spec, tmp_path / "w1", "--strategy", "grid", "--epochs", "1", "--workers", "1") == 0
    assert _search(spec, tmp_path / "w2", "--strategy", "grid", "--epochs", "1", "--workers", "2") == 0
    one, two = _board(tmp_path / "w1"), _board(tmp_path / "w2")
    assert one == two and len(one) == 5
    assert (tmp_path / "w1" / "best.dnn").exists() and (tmp_path / "w1" / "leaderboard.md").exists()
    best = (tmp_path / "w1" / "best.dnn").read_text()
    frontend.parse(best, "best.dnn")  # a plain spec
    assert (tmp_path / "w1" / "trials" / one[1][1] / "best.npz").exists()  # its run, for dnnspec export
    for w in ("w1", "w2"):  # every trial ran single-threaded, whatever the worker count
        assert {json.loads(p.read_text())["threads"] for p in (tmp_path / w / "trials").glob("*.json")} == {"1"}
        runs = [p for p in (tmp_path / w / "trials").iterdir() if p.is_dir()]  # no PNGs per trial: --no-plots
        assert runs and all((r / "history.csv").exists() and not list(r.glob("*.png")) for r in runs)
    assert "best: trial" in capsys.readouterr().out


def test_the_curves_are_drawn_by_a_fork_server_child_after_a_local_search(tmp_path, monkeypatch):
    """The child (matplotlib imported there already) draws curves.png; the parent draws only where it failed."""
    pytest.importorskip("matplotlib")
    spec = _spec(tmp_path, SMALL)
    assert _search(spec, tmp_path / "s", "--strategy", "grid", "--epochs", "1", "--workers", "1") == 0
    assert runner._server_started  # a local search started the fork server
    curves = tmp_path / "s" / "curves.png"
    curves.unlink()
    here = []
    monkeypatch.setattr(runner, "_plot", lambda runs, path: here.append(path) or path)  # the parent's own drawing
    runs = sorted((tmp_path / "s" / "trials").glob("[0-9][0-9][0-9][0-9]"))
    assert runner._curves(runs, curves) == curves
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and here == []
    (runs[0] / "history.csv").write_text("not,a\nhistory")  # the child fails: the parent tries, and reports
    assert runner._curves(runs, curves) == curves and here == [curves]
    from dnnspec import plots

    monkeypatch.setattr(plots, "_have_matplotlib", lambda: False)  # found but not importable: no plot, no error
    assert runner._curves(runs, curves) is None and here == [curves]


def _first_epoch_key(run: Path) -> tuple[float, float]:
    with open(run / "history.csv", newline="") as f:
        row = next(csv.DictReader(f))
    return -float(row["val_accuracy"]), float(row["val_loss"])


def _in_server_child() -> tuple[bool, bool]:
    from dnnspec.search import preload

    return preload.in_fork_server(), "dnnspec.search.preload" in __import__("sys").modules


def test_the_fork_server_starts_early_warm_and_knows_itself():
    """start_server returns at once; what it forks imported the preload (matplotlib warmed, quick exit),
    which only the server registers: in this process in_fork_server() is False."""
    import time
    from concurrent.futures import ProcessPoolExecutor

    from dnnspec.search import preload, workers

    if not workers.has_server():
        pytest.skip("no fork server on this system")
    t = time.perf_counter()
    workers.start_server()
    assert time.perf_counter() - t < 0.5  # the server imports in the background
    with workers.single_threaded(), ProcessPoolExecutor(1, mp_context=workers.context()) as pool:
        assert pool.submit(_in_server_child).result(timeout=120) == (True, True)
    assert preload.in_fork_server() is False


def test_halving_stops_the_weaker_half(tmp_path):
    spec = _spec(tmp_path, SMALL)
    out = tmp_path / "h"
    assert _search(spec, out, "--strategy", "halving", "--trials", "4", "--epochs", "2", "--workers", "2") == 0
    board = _board(out)[1:]
    epochs = {row[1]: int(row[2]) for row in board}
    assert sorted(epochs.values()) == [1, 1, 2, 2]
    keys = {t: _first_epoch_key(out / "trials" / t) for t in epochs}
    kept = [keys[t] for t, e in epochs.items() if e == 2]
    stopped = [keys[t] for t, e in epochs.items() if e == 1]
    assert max(kept) <= min(stopped)  # the survivors were the best two after epoch 1
    assert [row[-1] for row in board] == ["", "", "stopped", "stopped"]


def test_resume_runs_only_the_unfinished_trials(tmp_path, capsys):
    spec = _spec(tmp_path, SMALL)
    out = tmp_path / "r"
    assert _search(spec, out, "--strategy", "grid", "--epochs", "1") == 0
    before = _board(out)
    trials = out / "trials"
    done = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    # interrupted: trial 0002 never recorded its result, its run folder is half-written
    (trials / "0002.json").unlink()
    (trials / "0002" / "best.npz").unlink()
    (out / "leaderboard.csv").unlink()
    capsys.readouterr()
    assert _search(spec, out, "--strategy", "grid", "--epochs", "1") == 2  # the folder holds a search
    assert "--resume" in capsys.readouterr().err
    assert _search(spec, out, "--strategy", "grid", "--epochs", "1", "--resume") == 0
    assert "training 1 trials" in capsys.readouterr().out
    assert _board(out) == before
    after = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    assert all(after[n] == t for n, t in done.items() if n != "0002.json")
    assert json.loads((trials / "0002.json").read_text())["epochs"] == 1


def test_resume_refuses_another_search(tmp_path, capsys):
    spec = _spec(tmp_path, SMALL)
    out = tmp_path / "x"
    assert _search(spec, out, "--resume") == 2  # nothing to resume
    assert "no search to resume" in capsys.readouterr().err
    out.mkdir()
    (out / "search.json").write_text(json.dumps({"strategy": "grid"}))
    assert _search(spec, out, "--resume", "--strategy", "grid") == 2
    assert "differs in spec_sha256" in capsys.readouterr().err
    assert not (out / "trials").exists()


def test_example_space_checks(capsys):
    assert main(["search", str(ROOT / "specs" / "search" / "spirals.dnn"), "--strategy", "grid", "--check-only"]) == 0
    assert "16 candidates, 0 invalid" in capsys.readouterr().out


def test_trials_start_costliest_first_and_rows_stay_in_index_order(tmp_path):
    """Jobs go to the backend by FLOPs per example, largest first (the workers then finish together);
    the rung's rows come back in candidate order whatever order they finished in."""
    cands = [runner.Candidate(i, (), f"# trial {i}\n", None, 10, flops) for i, flops in enumerate([5, 40, 20, 40])]

    class Backend:
        def where(self):
            return "a fake backend"

        def map(self, jobs):
            self.order = [j["index"] for j in jobs]
            for j in reversed(jobs):  # finishing in another order than submitted
                yield {"index": j["index"], "epochs": j["epochs"], "accuracy": j["index"] / 10}

    backend = Backend()
    r = runner.Runner(cands, runner.Settings(out=tmp_path), backend)
    rows = r.rung([0, 1, 2, 3], epochs=1)
    assert backend.order == [1, 3, 2, 0]
    assert [row["index"] for row in rows] == [0, 1, 2, 3]


def test_workers_take_the_folder_and_variables_of_each_search(tmp_path, monkeypatch):
    """The fork server outlives one search: a second search in this process, from another folder, with a
    relative --out and another DNNSPEC_ variable, runs its trials there and with it."""
    spec = _spec(tmp_path, SMALL)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)
    assert main(["search", spec, "--out", "s", "--limit", "200", "--strategy", "grid", "--epochs", "1",
                 "--workers", "2", "--trials", "2"]) == 0
    monkeypatch.chdir(second)
    monkeypatch.setenv("DNNSPEC_FUSED", "0")
    assert main(["search", spec, "--out", "s", "--limit", "200", "--strategy", "grid", "--epochs", "1",
                 "--workers", "2", "--trials", "2"]) == 0
    assert _board(first / "s") == _board(second / "s")  # the same bits on both paths, in each folder
    assert len(list((second / "s" / "trials").glob("*.json"))) == 4


def test_a_local_trial_runs_in_its_submissions_folder_and_environment(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(runner, "_trial", lambda job: seen.update(
        cwd=os.getcwd(), fused=os.environ.get("DNNSPEC_FUSED"), threads=os.environ.get("DNNSPEC_THREADS")) or {})
    monkeypatch.chdir(ROOT)  # restored after the test, as _local_trial moves this process
    monkeypatch.setenv("DNNSPEC_FUSED", "1")  # the worker's own, stale value: dropped
    monkeypatch.delenv("DNNSPEC_THREADS", raising=False)
    runner._local_trial({"cwd": str(tmp_path), "env": {"DNNSPEC_THREADS": "1"}})
    assert seen == {"cwd": str(tmp_path), "fused": None, "threads": "1"}
