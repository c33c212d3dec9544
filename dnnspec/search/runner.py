"""Running a search: pick candidates, check them all, train the valid ones in worker processes, rank them.

    cands = pick(space, "random", trials=20, seed=0)       # [(index, picks)]
    checked = check_all(space, cands)                      # each through the normal front end + budget
    board = run_search(space, checked, Settings(...))      # trials in DIR/trials/NNN, leaderboard rows

Each trial is ``dnnspec train`` of its candidate text in a worker process (forked from a
server that imported the trial's modules once, or spawned where there is none) with
one BLAS and one engine thread (``DNNSPEC_THREADS=1``), seeded with
``trial_seed(search seed, candidate index)``: a trial's bits depend on neither the worker
count nor the order trials finish in, so the leaderboard is the same for any ``--workers``.
Successive halving (synchronous ASHA): all trials run ``min_epochs``; the best
``ceil(n / eta)`` continue (their run folder is resumed) with twice the epochs, until one
is left or ``epochs`` is reached. A trial's result is written to ``DIR/trials/NNN.json``
once its run ends, so ``--resume`` skips it (or resumes its run for a later rung).
``Settings.backend == "ray"`` runs the same ``_trial`` as Ray tasks instead (ray_backend.py,
the only module that imports Ray).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import csv
import importlib.util
import io
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DnnspecError, SpecError, UsageError
from .space import Space
from .workers import context, has_server, single_threaded, trial_env

MAX_GRID_RUN = 10_000  # checking takes a few ms per candidate: a larger grid is sampled instead
_server_started = False  # a local search of this process has started the fork server (LocalPool.map)


@dataclass(frozen=True)
class Candidate:
    """One expanded candidate: ``problem`` is None for a valid one, else the first reason it is not."""

    index: int
    picks: tuple[Any, ...]
    text: str
    problem: str | None = None
    params: int = 0
    flops: int = 0


@dataclass
class Settings:
    """Where and how trials run (the ``dnnspec search`` flags)."""

    out: Path
    strategy: str = "random"
    seed: int = 0
    workers: int | None = None  # None: 1 here; on a Ray cluster, as many as it has CPUs
    epochs: int | None = None  # None: the spec's train epochs
    min_epochs: int = 1
    eta: int = 2
    data: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    resume: bool = False
    log: Any = field(default=None, repr=False)
    backend: str = "local"  # or "ray"
    address: str | None = None  # the Ray cluster; None: a local Ray instance


def trial_seed(seed: int, index: int) -> int:
    """The training seed of candidate ``index``: a hash of (search seed, index) in [0, 2^32)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def pick(space: Space, strategy: str, trials: int, seed: int) -> list[tuple[int, tuple]]:
    """The candidates to check: the whole grid, or ``trials`` random draws (candidate i from (seed, i)).

    ``halving`` takes the grid when it has at most ``trials`` points, else random draws.
    """
    size = space.size
    if strategy == "grid" or (strategy == "halving" and size is not None and size <= trials):
        if size is None:
            cont = next(d for d in space.dims if d.size is None)
            raise UsageError(f"{space.path}:{cont.span.line}:{cont.span.col}: grid search needs finite choices, "
                             f"found {cont.kind}(...); use --strategy random or halving")
        if size > MAX_GRID_RUN:
            raise UsageError(f"the grid has {size} candidates (at most {MAX_GRID_RUN} are checked and run); "
                             "use --strategy random --trials N")
        return list(enumerate(space.grid()))
    return [(i, space.sample(seed, i)) for i in range(trials)]


def check_one(space: Space, index: int, picks: tuple) -> Candidate:
    """Expand and check one candidate: front end (shapes, memory), then the budget."""
    from .. import frontend

    text = space.expand(picks)
    try:
        model = frontend.parse(text, space.path)
    except SpecError as e:
        d = e.diagnostics[0]
        return Candidate(index, picks, text, f"{d.span.line}:{d.span.col}: {d.message}")
    params = sum(int(np.prod(p.shape)) for p in model.params)
    flops = sum(layer.flops for layer in model.layers)
    problem = None
    if params > space.budget.get("params", math.inf):
        problem = f"budget: more than params={space.budget['params']:g} parameters"
    elif flops > space.budget.get("flops", math.inf):
        problem = f"budget: more than flops={space.budget['flops']:g} FLOPs per example"
    return Candidate(index, picks, text, problem, params, flops)


def check_all(space: Space, cands: list[tuple[int, tuple]]) -> list[Candidate]:
    """Every candidate checked; identical expansions after the first are dropped (e.g. a value
    inside an alternative that was not chosen)."""
    seen: set[str] = set()
    out = []
    for index, picks in cands:
        c = check_one(space, index, picks)
        if c.text not in seen:
            seen.add(c.text)
            out.append(c)
    return out


def check_report(cands: list[Candidate], picked: int) -> list[str]:
    """Lines: how many candidates, how many invalid, and why (grouped by message, most frequent first)."""
    bad = Counter(c.problem for c in cands if c.problem)
    dup = picked - len(cands)
    lines = [f"{len(cands)} candidates" + (f" ({dup} duplicates dropped)" if dup else "")
             + f", {sum(bad.values())} invalid"]
    lines += [f"  {n} x {msg}" for msg, n in bad.most_common()]
    return lines


# --- trials ---------------------------------------------------------------------------


def _trial(job: dict) -> dict:
    """Worker: train one candidate for ``job['epochs']`` epochs into its run folder; its result row."""
    from .. import data
    from ..commands import train

    data.keep_builtins()  # this worker trains trial after trial on the same set: read it once
    run = Path(job["run"])
    parser = argparse.ArgumentParser()  # train's own flags and defaults: a flag added there is never missing here
    train.add_arguments(parser)
    args = parser.parse_args(["--", job["spec"]])
    args.__dict__.update(data=job["data"], data_dir=job["data_dir"], out=str(run), epochs=job["epochs"],
                         seed=job["seed"], resume=job["resume"], overwrite=not job["resume"] and run.exists(),
                         limit=job["limit"], progress="none", no_plots=True)  # the search draws every trial's curves
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            train.run(args)
    except DnnspecError as e:
        return {"index": job["index"], "epochs": job["epochs"], "error": str(e).splitlines()[0]}
    return {"index": job["index"], "epochs": job["epochs"], "seed": job["seed"], **_scores(run),
            "threads": os.environ.get("OPENBLAS_NUM_THREADS")}


def _scores(run: Path) -> dict:
    """Best validation accuracy and loss over the run's epochs (training ones where no validation)."""
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    def best(key: str, fn) -> str:
        vals = [float(r[key]) for r in rows if r.get(key)]
        return format(fn(vals), ".6g") if vals else ""
    acc = best("val_accuracy", max) or best("accuracy", max)
    loss = best("val_loss", min) or best("loss", min)
    return {"accuracy": acc, "loss": loss, "epochs_run": str(len(rows))}


def _score_key(row: dict) -> tuple:
    """Sort key: longest trained first (halving survivors), then accuracy, then loss, then index."""
    acc = float(row["accuracy"]) if row.get("accuracy") else -math.inf
    loss = float(row["loss"]) if row.get("loss") else math.inf
    return (-row["epochs"], -acc, loss, row["index"])


def _local_trial(job: dict) -> dict:
    """``_trial`` in a local worker, in the submitting process's folder and with its ``DNNSPEC_*`` variables:
    a worker forked from the fork server has the server's, from when the first search of this process began."""
    os.chdir(job["cwd"])
    for k in [k for k in os.environ if k.startswith("DNNSPEC_") and k not in job["env"]]:
        del os.environ[k]
    os.environ.update(job["env"])
    return _trial(job)


class LocalPool:
    """The local backend: each rung's trials in a fresh process pool of ``workers`` processes (see workers.context)."""

    def __init__(self, workers: int | None):
        self.workers = workers or 1

    def where(self) -> str:
        return f"{self.workers} workers"

    def map(self, jobs: list[dict]) -> Iterator[dict]:
        """``_trial`` of each job; rows in job order, each as soon as it and those before it are done."""
        global _server_started
        _server_started = has_server()
        with single_threaded():  # map submits every job now, which starts the workers: with this env
            here = {"cwd": os.getcwd(), "env": trial_env()}
            pool = cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=context())
            rows = pool.map(_local_trial, [{**job, **here} for job in jobs])
        try:
            yield from rows
        finally:  # on Ctrl-C or an error: queued trials never start (--resume runs them later)
            pool.shutdown(wait=True, cancel_futures=True)


class Runner:
    """Runs rungs of trials on a backend (LocalPool, ray_backend.RayTasks), skipping those already done."""

    def __init__(self, cands: list[Candidate], s: Settings, backend: Any):
        self.s = s
        self.backend = backend
        self.cands = {c.index: c for c in cands}
        self.trials = s.out / "trials"
        self.trials.mkdir(parents=True, exist_ok=True)
        self.results: dict[int, dict] = {}

    def _name(self, index: int) -> str:
        return f"{index:04d}"

    def _done(self, index: int) -> dict | None:
        p = self.trials / f"{self._name(index)}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def _job(self, index: int, epochs: int) -> dict | None:
        """The worker's job, or None when the trial already ran this many epochs."""
        done = self._done(index)
        if done is not None and "error" not in done and done["epochs"] >= epochs:
            self.results[index] = done
            return None
        spec = self.trials / f"{self._name(index)}.dnn"
        spec.write_text(self.cands[index].text)
        return {"index": index, "spec": str(spec), "run": str(self.trials / self._name(index)), "epochs": epochs,
                "seed": trial_seed(self.s.seed, index), "resume": done is not None and "error" not in done,
                "data": self.s.data, "data_dir": self.s.data_dir, "limit": self.s.limit}

    def rung(self, indices: list[int], epochs: int) -> list[dict]:
        """Train ``indices`` to ``epochs`` epochs (in parallel); their result rows, in index order."""
        jobs = [j for j in (self._job(i, epochs) for i in indices) if j is not None]
        # the costliest first (FLOPs per example; the same epochs and data for all): the last trials to
        # start are then the short ones, and the workers finish closer together (a grid lists its widest
        # candidates last). Results do not depend on the order: each trial has its own seed and folder.
        jobs.sort(key=lambda j: (-self.cands[j["index"]].flops, j["index"]))
        if jobs:
            self._say(f"training {len(jobs)} trials for {epochs} epochs on {self.backend.where()}")
            with contextlib.closing(self.backend.map(jobs)) as rows:
                for row in rows:
                    self._record(row)  # each as soon as it is done: --resume keeps it
        return [self.results[i] for i in indices]

    def _record(self, row: dict) -> None:
        self.results[row["index"]] = row
        p = self.trials / f"{self._name(row['index'])}.json"
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(row))
        os.replace(tmp, p)  # atomic: a killed search never leaves half a result

    def _say(self, line: str) -> None:
        if self.s.log is not None:
            self.s.log.write(line + "\n")


def backend(s: Settings) -> contextlib.AbstractContextManager:
    """The backend trials run on, as a context: a LocalPool, or a connection to Ray (imported only then)."""
    if s.backend == "ray":
        from . import ray_backend

        return ray_backend.connect(s.address, s.workers, s.out, trial=_trial, env=trial_env())
    return contextlib.nullcontext(LocalPool(s.workers))


def run_search(cands: list[Candidate], s: Settings, max_epochs: int) -> list[dict]:
    """Train the valid candidates (all at ``max_epochs``, or by successive halving); leaderboard rows, best first."""
    with backend(s) as where:
        return _run(Runner([c for c in cands if c.problem is None], s, where), s, max_epochs)


def _run(runner: Runner, s: Settings, max_epochs: int) -> list[dict]:
    """All at ``max_epochs``, or rungs of successive halving; the rows, best first."""
    valid = list(runner.cands)
    if s.strategy != "halving":
        return sorted(runner.rung(valid, max_epochs), key=_score_key)
    alive, epochs = valid, min(s.min_epochs, max_epochs)
    while True:
        rows = sorted(runner.rung(alive, epochs), key=_score_key)
        if len(alive) == 1 or epochs >= max_epochs:
            break
        keep = [r for r in rows if "error" not in r][:math.ceil(len(alive) / s.eta)]
        if not keep:
            break
        alive, epochs = [r["index"] for r in keep], min(2 * epochs, max_epochs)
    return sorted(runner.results.values(), key=_score_key)


# --- results --------------------------------------------------------------------------


def leaderboard(rows: list[dict], cands: list[Candidate], space: Space) -> tuple[list[str], list[list[str]]]:
    """Header and cells: rank, trial, epochs, accuracy, loss, params, FLOPs, then each dimension's pick."""
    by_index = {c.index: c for c in cands}
    top = max((r["epochs"] for r in rows), default=0)
    header = ["rank", "trial", "epochs", "accuracy", "loss", "params", "flops"] + [d.label() for d in space.dims]
    header.append("status")
    table = []
    for rank, r in enumerate(rows, 1):
        c = by_index[r["index"]]
        status = r.get("error") or ("stopped" if r["epochs"] < top else "")
        table.append([str(rank), f"{r['index']:04d}", r.get("epochs_run", "0"), r.get("accuracy", ""),
                      r.get("loss", ""), str(c.params), str(c.flops)]
                     + [d.shown(p) for d, p in zip(space.dims, c.picks)] + [status])
    return header, table


def terminal_table(header: list[str], table: list[list[str]]) -> str:
    """Columns padded to their widest cell."""
    widths = [max(len(x) for x in col) for col in zip(header, *table)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *table])


def write_results(out: Path, header: list[str], table: list[list[str]], best: Candidate | None,
                  space: Space) -> list[Path]:
    """leaderboard.csv, leaderboard.md, best.dnn (the winner as a plain spec) and curves.png in ``out``."""
    with open(out / "leaderboard.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *table])
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(x.replace("|", "\\|") for x in line) + " |" for line in table]
    (out / "leaderboard.md").write_text("\n".join(md) + "\n")
    written = [out / "leaderboard.csv", out / "leaderboard.md"]
    if best is not None:
        (out / "best.dnn").write_text(_best_text(best, space, out))
        written.append(out / "best.dnn")
    runs = [out / "trials" / row[1] for row in table if (out / "trials" / row[1] / "history.csv").exists()]
    if runs and importlib.util.find_spec("matplotlib") is not None:  # found without importing it here
        curves = _curves(runs, out / "curves.png")
        if curves is not None:
            written.append(curves)
    return written


def _curves(runs: list[Path], path: Path) -> Path | None:
    """Every trial's curves in one plot, drawn by a child of the fork server when a local search of this
    process started one (matplotlib imported and warmed there: search/preload.py), else here;
    None where matplotlib does not import (no plot, as without it)."""
    if _server_started:
        child = context().Process(target=_plot_child, args=([str(r.resolve()) for r in runs], str(path.resolve())))
        child.start()
        child.join()
        if child.exitcode == 0:
            return path
    from ..plots import _have_matplotlib

    if not _have_matplotlib():
        return None
    return _plot(runs, path)  # here, where an error is reported as usual


def _plot(runs: list, path: Path | str) -> Path:
    from ..plots import plot_runs

    with warnings.catch_warnings():  # many runs crowd the legend; the plot is still right
        warnings.simplefilter("ignore", UserWarning)
        return plot_runs(runs, path)


def _plot_child(runs: list[str], path: str) -> None:
    """_plot in a fork-server child; any failure is an exit status (the parent then draws it itself)."""
    try:
        _plot(runs, path)
    except BaseException:  # noqa: BLE001 - reported by the parent's own attempt, without a traceback here
        os._exit(1)


def _best_text(best: Candidate, space: Space, out: Path) -> str:
    """The winner as a plain spec: a header saying where it came from, runs of blank lines folded."""
    run = out / "trials" / f"{best.index:04d}"
    head = (f"# best candidate {best.index:04d} of the search {space.path}; its run: {run}\n"
            f"# its trial was trained with: dnnspec train THIS_FILE --seed {trial_seed_of(run)}\n")
    return head + re.sub(r"\n{3,}", "\n\n", best.text.strip("\n")) + "\n"


def trial_seed_of(run: Path) -> str:
    """The seed recorded for a trial's run (its NNNN.json beside the run folder)."""
    p = run.parent / f"{run.name}.json"
    return str(json.loads(p.read_text()).get("seed", "")) if p.exists() else ""
