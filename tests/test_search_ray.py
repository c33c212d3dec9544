"""dnnspec search --backend ray: the trials as Ray tasks give the local backend's leaderboard (docs/search.md).

A Ray cluster is started with ``ray start --head`` on 127.0.0.1 in a session of its own with
a private ``--temp-dir``, and stopped by ending the processes of that session (never ``ray stop``,
which ends every Ray process of the machine). Ray runs go through a subprocess with a timeout. The
tests that need Ray skip when it is not installed; the import and error tests run always.
Trials: the 4 candidates of a tiny MLP on 200 spirals examples, 1-2 epochs.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_search import SMALL  # the same small space as the local backend's tests

from dnnspec.cli import main

ROOT = Path(__file__).resolve().parent.parent
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'dnnspec[ray]')")
RUN_TIMEOUT = 240  # seconds for one dnnspec search on Ray (a local instance starts in 5-10 s)

GRID = ("--strategy", "grid", "--epochs", "1", "--limit", "200")
HALVING = ("--strategy", "halving", "--trials", "4", "--epochs", "2", "--limit", "200")


def _spec(tmp_path: Path) -> str:
    p = tmp_path / "small.dnn"
    p.write_text(SMALL)
    return str(p)


def _board(out: Path) -> list[list[str]]:
    with open(out / "leaderboard.csv", newline="") as f:
        return list(csv.reader(f))


def _params(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every trial's trained parameters (best.npz), by trial name."""
    found = {}
    for run in sorted(p for p in (out / "trials").iterdir() if p.is_dir()):
        with np.load(run / "best.npz") as z:
            found[run.name] = {k: z[k] for k in z.files if k.startswith("param/")}
    return found


def _same_params(a: Path, b: Path) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(
        pa[t].keys() == pb[t].keys() and all(np.array_equal(pa[t][k], pb[t][k]) for k in pa[t]) for t in pa)


def _dnnspec(args: list[str], cwd: Path, prelude: str = "", **kw) -> subprocess.CompletedProcess:
    """``dnnspec ARGS`` in a fresh Python (``prelude`` runs first), bounded by RUN_TIMEOUT."""
    code = f"import sys\n{prelude}\nfrom dnnspec.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: a process started with start_new_session=True and
    all it starts (Ray's workers put themselves in process groups of their own, but stay in the session)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # state, ppid, pgrp, session, ...
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            live.append(int(stat.parent.name))
    return live


def _wait_gone(sid: int, seconds: float) -> list[int]:
    """The session's live processes once it is empty or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while _session(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _session(sid)


def _end_session(sid: int, grace: float = 2.0) -> list[int]:
    """SIGTERM to each process of the session, SIGKILL to those left after ``grace`` s; those still alive."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in _session(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if not _wait_gone(sid, wait):
            break
    return _session(sid)


@pytest.fixture(scope="module")
def local_board(tmp_path_factory):
    """The local backend's grid search (2 worker processes): the reference the Ray runs must equal."""
    tmp = tmp_path_factory.mktemp("local")
    out = tmp / "out"
    assert main(["search", _spec(tmp), "--out", str(out), "--workers", "2", *GRID]) == 0
    return out


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs and token authentication: its address and the
    environment that reaches it; stopped by ending its session's processes after."""
    temp = tempfile.mkdtemp(prefix="dnr", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    port = _free_port()
    auth = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**auth, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # else Ray swaps 127.0.0.1 for the LAN address
           "AUTOSCALER_METRIC_PORT": str(_free_port())}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--ray-client-server-port", str(_free_port()),
           "--dashboard-agent-listen-port", str(_free_port()), "--num-cpus", "2", "--include-dashboard", "false",
           "--disable-usage-stats", "--temp-dir", temp]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log[-2000:]
        yield f"127.0.0.1:{port}", auth
    finally:
        left = _end_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes {left} of the test cluster survived SIGKILL"


# --- Ray only on its path; one-line errors ---------------------------------------------


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def test_only_the_ray_backend_imports_ray():
    found = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dnnspec").rglob("*.py")
             if any(m == "ray" or m.startswith("ray.") for m in _imports_of(p))}
    assert found == {"dnnspec/search/ray_backend.py"}
    for p in (ROOT / "dnnspec" / "search" / "runner.py", ROOT / "dnnspec" / "commands" / "search.py"):
        tree = ast.parse(p.read_text("utf-8"))  # ray_backend is imported inside a function only
        top = [n for n in tree.body if isinstance(n, ast.ImportFrom) and "ray_backend" in ast.unparse(n)]
        assert not top, p


def test_check_and_local_search_do_not_import_ray(tmp_path):
    spec = _spec(tmp_path)
    prelude = "import atexit\natexit.register(lambda: print('RAY', 'ray' in sys.modules))"
    for args in (["check", str(ROOT / "specs" / "spirals.dnn")],
                 ["search", spec, "--out", str(tmp_path / "o"), "--trials", "1", "--epochs", "1", "--limit", "200"]):
        r = _dnnspec(args, tmp_path, prelude)
        assert r.returncode == 0, r.stderr
        assert "RAY False" in r.stdout


def test_missing_ray_is_one_line(tmp_path):
    r = _dnnspec(["search", _spec(tmp_path), "--backend", "ray", *GRID], tmp_path, "sys.modules['ray'] = None")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "pip install 'dnnspec[ray]'" in r.stderr
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_address_flags_are_checked(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(["search", spec, "--address", "127.0.0.1:6379", *GRID]) == 2
    assert "add --backend ray" in capsys.readouterr().err
    for bad in ("nohost", "10.0.0.5:port", "http://10.0.0.5:6379", "10.0.0.5:0"):
        assert main(["search", spec, "--backend", "ray", "--address", bad, *GRID]) == 2
        assert "expected HOST:PORT" in capsys.readouterr().err


def test_a_task_that_cannot_see_the_search_folder_says_so(tmp_path):
    """On a cluster without a shared --out, the task stops the search rather than train into a lost folder."""
    from dnnspec.search import ray_backend

    ran = []
    job = {"index": 3, "run": "out/trials/0003"}
    row = ray_backend._task(ran.append, job, str(tmp_path))  # tmp_path/out/trials does not exist here
    assert not ran and "not visible on Ray node" in row["fatal"] and str(tmp_path / "out" / "trials") in row["fatal"]
    (tmp_path / "out" / "trials").mkdir(parents=True)
    here = os.getcwd()
    assert ray_backend._task(lambda j: {"cwd": os.getcwd()}, job, str(tmp_path)) == {"cwd": str(tmp_path)}
    assert os.getcwd() == here  # the worker's own folder is restored


@needs_ray
def test_unreachable_or_silent_address_fails_in_bounded_time(tmp_path):
    spec, port = _spec(tmp_path), _free_port()  # nothing listens there
    t0 = time.monotonic()
    r = _dnnspec(["search", spec, "--backend", "ray", "--address", f"127.0.0.1:{port}", *GRID], tmp_path)
    assert r.returncode == 2 and "no Ray cluster reachable" in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and time.monotonic() - t0 < 30
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        r = _dnnspec(["search", spec, "--backend", "ray", "--address", address, "--out", str(tmp_path / "s"), *GRID],
                     tmp_path, "from dnnspec.search import ray_backend\nray_backend.CONNECT_TIMEOUT = 5")
    assert r.returncode == 2 and "no Ray cluster answered within 5 s" in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and time.monotonic() - t0 < 60  # Ray's retries go to ray.log


# --- the same leaderboard ---------------------------------------------------------------


@needs_ray
def test_ray_cluster_gives_the_local_leaderboard(tmp_path, local_board, cluster):
    address, env = cluster
    out = tmp_path / "ray"
    r = _dnnspec(["search", _spec(tmp_path), "--out", str(out), "--backend", "ray", "--address", address, *GRID],
                 tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert f"on the Ray cluster at {address} (2 CPUs)" in r.stdout
    assert _board(out) == _board(local_board) and len(_board(out)) == 5
    assert _same_params(out, local_board)  # bit-identical training, not only equal scores
    assert {json.loads(p.read_text())["threads"] for p in (out / "trials").glob("*.json")} == {"1"}


@needs_ray
def test_halving_resumed_on_ray_gives_the_local_leaderboard(tmp_path, cluster):
    address, env = cluster
    spec = _spec(tmp_path)
    out = tmp_path / "h"
    assert main(["search", spec, "--out", str(out), "--workers", "2", *HALVING]) == 0
    before = _board(out)
    survivor = next(row[1] for row in before[1:] if row[2] == "2")
    (out / "trials" / f"{survivor}.json").unlink()  # interrupted: it reruns rung 1, then resumes its run
    (out / "leaderboard.csv").unlink()
    r = _dnnspec(["search", spec, "--out", str(out), "--backend", "ray", "--address", address, "--resume", *HALVING],
                 tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "training 1 trials for 1 epochs" in r.stdout and "training 1 trials for 2 epochs" in r.stdout
    assert _board(out) == before


@needs_ray
def test_local_ray_instance_gives_the_local_leaderboard_and_stops(tmp_path, local_board):
    out = tmp_path / "ray"
    args = ["search", _spec(tmp_path), "--out", str(out), "--backend", "ray", "--workers", "2", *GRID]
    home = tmp_path / "home"  # Ray would write ~/.ray/auth_token for a new local instance without a token
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | {"HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "dnnspec", *args], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        left = _wait_gone(proc.pid, 10)  # what the search left running: its Ray instance must be gone
        _end_session(proc.pid, grace=0)
    assert proc.returncode == 0, stderr
    assert not left, f"the local Ray instance left processes {left}"
    assert "on a local Ray instance (2 CPUs)" in stdout and stderr == ""
    assert _board(out) == _board(local_board)
    assert _same_params(out, local_board)
    assert not (home / ".ray").exists()
