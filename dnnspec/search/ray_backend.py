"""Trials as Ray tasks: ``dnnspec search --backend ray [--address ADDR]``; the only module that imports Ray.

    with connect(None, 2, out, trial=runner._trial, env=runner.trial_env()) as tasks:
        rows = list(tasks.map(jobs))        # a local Ray instance on 127.0.0.1 with 2 CPUs

Each trial is one task (``num_cpus=1``) running ``trial(job)``, the function the local
workers run, with the same thread budget: ``env`` (``runner.trial_env()``: the driver's
``DNNSPEC_*`` variables, one BLAS and one engine thread) goes in the task's ``runtime_env``,
so its Ray worker process starts with it, before NumPy loads. The same job and seed give the same
bits as a local worker. Rows come back as dicts; the run folders are written by the tasks
into ``--out`` themselves, so on a cluster ``--out`` (and the data) must be on a filesystem
every node mounts at the driver's path; a task that cannot see it stops the search.

Without an address Ray starts a private instance bound to 127.0.0.1 (``num_cpus`` =
``--workers``) and shuts it down at the end. With one it joins that cluster (``HOST:PORT``
of the head's GCS, ``ray://HOST:PORT`` through Ray Client, or ``auto``) after a TCP check
(:func:`require`, which the command calls before any work), within CONNECT_TIMEOUT seconds.
Ray's own messages go to ``--out``/ray.log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DnnspecError, UsageError

CONNECT_TIMEOUT = 60.0  # seconds for ray.init to join a cluster that answered the TCP check
PROBE_TIMEOUT = 5.0  # seconds for the TCP check of HOST:PORT
OBJECT_STORE = 128 << 20  # bytes; a local instance moves only small dicts
INSTALL = "pip install 'dnnspec[ray]'"
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def split_address(address: str) -> tuple[str, int] | None:
    """``HOST:PORT`` or ``ray://HOST:PORT`` -> (host, port); ``auto`` -> None; anything else: UsageError."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if "://" in rest or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--address {address!r}: expected HOST:PORT (the head node's GCS, as `ray start --head` "
                         "prints it), ray://HOST:PORT (Ray Client) or auto")
    return host, int(port)


def require(address: str | None) -> Any:
    """Import Ray (the module), or a one-line UsageError naming the install command; check that the
    address answers (a TCP connection within PROBE_TIMEOUT: Ray itself would retry for minutes).

    Set before Ray is first imported, which reads them then (a user's own values win):

    * ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` for a local instance or a loopback address: Ray
      otherwise replaces 127.0.0.1 by the machine's network address (named after the systems
      where 0 is the default); with it Ray binds to 127.0.0.1;
    * for a local instance, token authentication with a token of its own (``RAY_AUTH_TOKEN``,
      inherited by its processes): a new local instance would otherwise write one to
      ~/.ray/auth_token, which every later ``ray start`` of the account then requires.
    """
    where = split_address(address) if address else None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None or (where and (where[0] in ("localhost", "::1") or where[0].startswith("127."))):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address is None and not any(k in os.environ for k in AUTH_VARS):
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    try:
        import ray
    except ImportError:
        raise UsageError(f"--backend ray needs Ray, which is not installed here: {INSTALL}") from None
    if where:
        _probe(address, *where)
    return ray


@contextlib.contextmanager
def connect(address: str | None, workers: int | None, out: Path, trial: Callable[[dict], dict],
            env: dict[str, str]) -> Iterator[RayTasks]:
    """Start a local Ray instance (``address`` None) or join a cluster; yield its RayTasks; shut down after."""
    ray = require(address)
    Path(out).mkdir(parents=True, exist_ok=True)
    log = Path(out) / "ray.log"
    with contextlib.ExitStack() as stack:
        if not ray.is_initialized():  # a Python caller's own ray.init is used as it is, and kept
            temp = None if address else stack.enter_context(
                tempfile.TemporaryDirectory(prefix="dnnspec-ray-", ignore_cleanup_errors=True))
            with _stderr_to(log) as keep_log:
                _start_local(ray, workers or 1, log, temp) if temp else _join(ray, address, log, keep_log)
            stack.callback(_shutdown, ray, log)
        yield RayTasks(ray, trial, env, workers if address else None, _place(ray, address, workers))


def _place(ray: Any, address: str | None, workers: int | None) -> str:
    """Where the trials run, for the progress line; a cluster without CPUs is refused (tasks would wait for ever)."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise UsageError(f"the Ray cluster at {address} has no CPUs for trials (each task asks for 1)")
    if address is None:
        return f"a local Ray instance ({cpus} CPUs)"
    return f"the Ray cluster at {address} ({cpus} CPUs{f', at most {workers} trials at once' if workers else ''})"


def _shutdown(ray: Any, log: Path) -> None:
    with _stderr_to(log):
        ray.shutdown()


def _start_local(ray: Any, cpus: int, log: Path, temp: str) -> None:
    """A private Ray instance on 127.0.0.1: no dashboard, ``cpus`` CPUs, a small object store, its
    sockets and logs in ``temp`` (removed after; not /tmp/ray, which other Ray users of the machine share)."""
    try:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=OBJECT_STORE,
                 log_to_driver=False, logging_level=logging.ERROR, _temp_dir=temp)
    except Exception as e:  # Ray's own errors: show the gist, keep the rest in the log
        raise DnnspecError(f"could not start a local Ray instance: {_gist(e)} (Ray's messages: {log})") from None


def _probe(address: str, host: str, port: int) -> None:
    """A TCP connection to HOST:PORT within PROBE_TIMEOUT, else one line."""
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT).close()
    except OSError as e:
        raise UsageError(f"--address {address}: no Ray cluster reachable there ({e.strerror or e}); start one "
                         "with `ray start --head` and pass the address it prints") from None


def _join(ray: Any, address: str, log: Path, keep_log: Callable[[], None]) -> None:
    """``ray.init(address)`` in a daemon thread, waited for CONNECT_TIMEOUT seconds: a port that answers
    but is no Ray head makes Ray retry for ever (and go on writing to file descriptor 2: ``keep_log``)."""
    failed: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=init, name="ray-init", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT)
    if thread.is_alive():
        keep_log()
        raise UsageError(f"--address {address}: no Ray cluster answered within {CONNECT_TIMEOUT:g} s (Ray's "
                         f"messages: {log}); pass the address `ray start --head` printed")
    if failed:
        hint = "; the cluster wants a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token)" \
            if "Unauthenticated" in log.read_text(errors="replace") else ""
        raise UsageError(f"--address {address}: {_gist(failed[0])} (Ray's messages: {log}){hint}")


class RayTasks:
    """The Ray backend: runs jobs as tasks of one CPU each, at most ``cap`` at once (None: the cluster decides)."""

    def __init__(self, ray: Any, trial: Callable[[dict], dict], env: dict[str, str], cap: int | None, place: str):
        self.ray, self.trial, self.cap, self.place = ray, trial, cap, place
        self.task = ray.remote(_task).options(name="dnnspec_trial", num_cpus=1, max_retries=1,
                                              runtime_env={"env_vars": env})

    def where(self) -> str:
        return self.place

    def map(self, jobs: list[dict]) -> Iterator[dict]:
        """``trial(job)`` of each job on the cluster; rows as they finish (their order does not matter)."""
        queue, pending = list(jobs), {}
        try:
            while queue or pending:
                while queue and (self.cap is None or len(pending) < self.cap):
                    job = queue.pop(0)
                    pending[self.task.remote(self.trial, job, os.getcwd())] = job
                done, _ = self.ray.wait(list(pending), num_returns=1)
                yield self._row(done[0], pending.pop(done[0]))
        finally:  # Ctrl-C or a failed trial: the rest stop (--resume runs them later)
            for ref in pending:
                self.ray.cancel(ref, force=True)

    def _row(self, ref: Any, job: dict) -> dict:
        try:
            row = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            raise DnnspecError(f"trial {job['index']:04d} failed on Ray: {_gist(e)}; the finished trials are "
                               "kept (--resume runs the others)") from None
        if "fatal" in row:
            raise UsageError(row["fatal"])
        return row


def _task(trial: Callable[[dict], dict], job: dict, cwd: str) -> dict:
    """On a Ray worker: ``trial(job)`` in the driver's folder, which must be visible here (a shared filesystem)."""
    trials = Path(job["run"]).parent
    if not os.path.isdir(cwd) or not (Path(cwd) / trials).is_dir():
        return {"fatal": f"the search folder {Path(cwd) / trials} is not visible on Ray node {socket.gethostname()}: "
                         "on a cluster --out must be on a filesystem every node mounts at the same path"}
    here = os.getcwd()
    os.chdir(cwd)  # relative --out, --data and spec paths mean what they mean to the driver
    try:
        return trial(job)
    finally:
        os.chdir(here)


def _gist(e: BaseException) -> str:
    """The last non-empty line of an error (a RayTaskError holds the remote traceback above it)."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[-1] if lines else type(e).__name__


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[Callable[[], None]]:
    """File descriptor 2 into ``path`` (appended): Ray's C++ core and the processes it starts write there.

    Yields ``keep()``: called, descriptor 2 stays on ``path`` (a Ray thread that will not stop
    still writes to it) and Python's ``sys.stderr``, where it was descriptor 2, moves to the old one.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
    kept: list[bool] = []
    try:
        yield lambda: kept.append(True)
    finally:
        sys.stderr.flush()
        if not kept:
            os.dup2(saved, 2)
            os.close(saved)
        elif _fd(sys.stderr) == 2:
            sys.stderr = open(saved, "w", buffering=1, errors="backslashreplace")  # for the rest of the process


def _fd(stream: Any) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO
        return None
