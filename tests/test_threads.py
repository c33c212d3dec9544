"""engine/cpus.py (CPU budget from affinity and cgroup quota, other processes' CPU use), engine/threads.py
(the governor, $DNNSPEC_THREADS, results independent of the thread count) and engine/crew.py (workers,
direct BLAS pieces)."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest

from dnnspec import ir
from dnnspec.engine import cpus, crew, threads
from dnnspec.engine.net import Net
from dnnspec.engine.optim import Adam
from dnnspec.errors import UsageError

# --- cgroup and affinity parsing (fake /proc and /sys trees) ------------------------------------------


@pytest.mark.parametrize("text, cpus_", [
    ("max 100000\n", None), ("50000 100000\n", 0.5), ("150000 100000", 1.5), ("200000 50000", 4.0),
    ("max", None), ("", None), ("garbage 100000", None), ("0 100000", None), ("100000", 1.0),
])
def test_cgroup_v2_cpu_max(text, cpus_):
    assert cpus.parse_cpu_max(text) == cpus_


@pytest.mark.parametrize("quota, period, cpus_", [
    ("-1", "100000", None), ("50000", "100000", 0.5), ("250000\n", "100000\n", 2.5), ("x", "100000", None),
    ("100000", "0", None),
])
def test_cgroup_v1_cfs_quota(quota, period, cpus_):
    assert cpus.parse_cfs(quota, period) == cpus_


def _tree(root, cgroup: str, mountinfo: str, files: dict[str, str]):
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "32 31 0:29 {root} /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"


def test_cgroup_v2_quota_of_the_process_and_its_parents(tmp_path):
    """The smallest quota on the way from the process's cgroup up to the mount counts."""
    root = _tree(tmp_path, "0::/user.slice/job.scope\n", V2_MOUNT, {
        "sys/fs/cgroup/user.slice/job.scope/cpu.max": "max 100000\n",
        "sys/fs/cgroup/user.slice/cpu.max": "150000 100000\n",
    })
    assert cpus.cgroup_cpus(root) == 1.5
    assert cpus.cpu_budget(root, affinity=64) == 2  # ceil(1.5): a container given 1.5 CPUs on a big host
    (root / "sys/fs/cgroup/user.slice/job.scope/cpu.max").write_text("50000 100000\n")
    assert cpus.cgroup_cpus(root) == 0.5
    assert cpus.cpu_budget(root, affinity=64) == 1


def test_cgroup_v2_unlimited_and_namespaced_root(tmp_path):
    """In a cgroup namespace the process sits at "/": the mount point's own cpu.max is its limit."""
    root = _tree(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cpus.cgroup_cpus(root) is None
    assert cpus.cpu_budget(root, affinity=6) == 6
    (root / "sys/fs/cgroup/cpu.max").write_text("100000 100000\n")
    assert cpus.cpu_budget(root, affinity=6) == 1  # docker --cpus=1 on a 6-CPU host


@pytest.mark.parametrize("mount_root, path, folder", [
    ("/", "/docker/abc", "sys/fs/cgroup/cpu,cpuacct/docker/abc"),  # the host's view
    ("/docker/abc", "/docker/abc", "sys/fs/cgroup/cpu,cpuacct"),  # inside the container: mount root = cgroup
])
def test_cgroup_v1_cfs_quota_files(tmp_path, mount_root, path, folder):
    root = _tree(tmp_path, f"5:memory:/x\n4:cpu,cpuacct:{path}\n", V1_MOUNT.format(root=mount_root), {
        f"{folder}/cpu.cfs_quota_us": "100000\n", f"{folder}/cpu.cfs_period_us": "100000\n",
    })
    assert cpus.cgroup_cpus(root) == 1.0
    assert cpus.cpu_budget(root, affinity=32) == 1


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cpus.cgroup_cpus(tmp_path) is None  # no /proc at all
    root = _tree(tmp_path / "r", "4:cpu,cpuacct:/a\n0::/b\n", V2_MOUNT + V1_MOUNT.format(root="/"), {})
    assert cpus.cgroup_cpus(root) is None
    assert cpus.cpu_budget(root, affinity=3) == 3


def test_budget_follows_affinity_and_quota(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(cpus, "cgroup_cpus", lambda root="/": 1.0)
    threads.reset()
    try:
        assert threads.budget() == 1 and threads.pieces() == 1 and threads.levels(threads.budget()) == [1]
        monkeypatch.setattr(cpus, "cgroup_cpus", lambda root="/": None)
        monkeypatch.setattr(cpus, "affinity_cpus", lambda: 64)
        threads.reset()
        assert threads.budget() == threads.MAX_THREADS and threads.pieces() == threads.MAX_PIECES
    finally:
        threads.reset()


# --- the meter of other processes' CPU time ----------------------------------------------------------


def _stat(busy0: int, busy1: int, busy_other: int = 0, niced: int = 0) -> str:
    """/proc/stat with cpu0, cpu1 (ours) and cpu2 (not ours); busy jiffies in user (and nice on cpu0)."""
    return (f"cpu  {busy0 + busy1} 0 0 0 0 0 0 0 0 0\n"
            f"cpu0 {busy0} {niced} 0 900 0 0 0 0 0 0\ncpu1 {busy1} 0 0 900 0 0 0 0 0 0\n"
            f"cpu2 {busy_other} 0 0 900 0 0 0 0 0 0\nintr 1 2 3\n\nctxt 99\n")


def test_cpu_meter_counts_others_on_our_cpus_only(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(_stat(0, 0))
    now, own = [0.0], [0.0]
    meter = cpus.CpuMeter(str(stat), cpus={0, 1}, clock=lambda: now[0], cpu_time=lambda: own[0])
    meter.tick = 100
    assert meter.ncpus == 2
    # one second: our CPUs were busy 150 jiffies (1.5 s), we used 0.4 s, cpu2 (not ours) was busy
    stat.write_text(_stat(100, 50, busy_other=100))
    now[0], own[0] = 1.0, 0.4
    assert meter.sample() == pytest.approx(1.1)
    now[0] = 1.01  # too soon to tell: None, and the window keeps growing from 1.0
    assert meter.sample() is None
    stat.write_text(_stat(100, 50, niced=80))  # a niced job took 0.8 s: it gives way to us, so it is free CPU
    now[0] = 2.0
    assert meter.sample() == pytest.approx(0.0)
    niced = cpus.CpuMeter(str(stat), cpus={0, 1}, clock=lambda: now[0], cpu_time=lambda: own[0])
    niced.tick, niced.count_nice = 100, True  # ... unless we are niced as well
    niced.last = niced._read()
    stat.write_text(_stat(100, 50, niced=160))
    now[0] = 3.0
    assert niced.sample() == pytest.approx(0.8)
    stat.unlink()
    now[0] = 4.0
    assert meter.sample() is None


# --- $DNNSPEC_THREADS --------------------------------------------------------------------------------


def test_env_fixes_the_count_and_the_governor_stays_out(monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    threads.reset()
    with threads.own_threads():
        assert threads.threads() == 3 and threads.active()
        threads.step()
        assert threads._governor is None  # never consulted
    monkeypatch.setenv(threads.ENV, "1")
    with threads.own_threads():
        assert threads.threads() == 1 and not threads.active()
    monkeypatch.setenv(threads.ENV, " auto ")
    assert threads.requested() is None


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_env_with_a_bad_value_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(UsageError, match=r"\$DNNSPEC_THREADS is .*expected a whole number of threads >= 1, or auto"):
        with threads.own_threads():
            pass
    assert threads._depth == 0
    with pytest.raises(UsageError, match=r"\$DNNSPEC_THREADS is .*expected a whole number of threads >= 1, or auto"):
        with threads.blas_threads():  # an MLP's passes: the same one line, nothing left changed
            pass
    assert threads._bdepth == 0 and threads._bk is None


# --- the governor, with a fake clock, fake step times and a fake meter -------------------------------


class FakeMeter:
    """others() gives the CPUs other processes take; None: "cannot tell yet"."""

    def __init__(self, others, ncpus: int = 2):
        self.others, self.ncpus, self.last = others, ncpus, (0.0, 0.0, 0.0)

    def sample(self):
        return self.others()


def drive(gov: threads.Governor, steps: int, step_time, now=None) -> list[int]:
    """Run ``steps`` training steps; ``step_time(k)`` is the seconds one step takes at k threads."""
    now = now if now is not None else [0.0]
    gov.clock = lambda: now[0]
    owner = threading.get_ident()
    gov.start(owner)
    counts = []
    for _ in range(steps):
        k = gov.step(owner)
        counts.append(k)
        now[0] += step_time(k)
    gov.stop()
    return counts


def test_governor_on_a_quiet_machine_uses_every_cpu_and_never_probes():
    gov = threads.Governor(2, meter=FakeMeter(lambda: 0.02))
    counts = drive(gov, 2000, lambda k: 0.002 if k == 2 else 0.003)
    assert counts == [2] * 2000  # the meter answered at start: no single-threaded steps at all
    assert [e for e, *_ in gov.history] == ["quiet"]


def test_governor_starts_on_one_thread_until_the_meter_answers():
    answers = iter([None] * 20 + [0.0] * 10_000)  # ~20 steps before the meter's window is long enough
    gov = threads.Governor(2, meter=FakeMeter(lambda: next(answers)))
    counts = drive(gov, 300, lambda k: 0.002)
    assert counts[:20] == [1] * 20 and counts[25:] == [2] * 275


def test_governor_with_a_busy_neighbour_keeps_one_thread_and_rarely_tries_two():
    """others = 1 of 2 CPUs: one thread; two is probed only every MAX_GAP (4 s), one ruinous step each time."""
    gov = threads.Governor(2, meter=FakeMeter(lambda: 1.0))
    counts = drive(gov, 4000, lambda k: 0.003 if k == 1 else 0.1)
    assert counts[0] == 1
    seconds = 4000 * 0.003
    assert 1 <= counts.count(2) <= seconds / gov.MAX_GAP + 1


def test_governor_keeps_two_threads_on_a_crowded_machine_when_they_measure_faster():
    """A CNN on a crowded machine: the meter says one thread, the step times say two; two stays until
    the others' load changes, then the meter rules again."""
    others = [1.2]
    gov = threads.Governor(2, meter=FakeMeter(lambda: others[0]))
    now = [0.0]
    counts = drive(gov, 1000, lambda k: 0.08 if k == 1 else 0.05, now)  # 4 s at one thread, then a probe
    assert counts[0] == 1 and counts[-20:] == [2] * 20
    assert ("switch", 2) in [h[:2] for h in gov.history]
    others[0] = 1.9  # much busier: back to one thread at the next sample
    counts = drive(gov, 20, lambda k: 0.08 if k == 1 else 0.05, now)
    assert counts[-10:] == [1] * 10


def test_governor_follows_a_neighbour_that_comes_and_goes():
    others = [0.0]
    gov = threads.Governor(2, meter=FakeMeter(lambda: others[0]))
    now = [0.0]
    drive(gov, 500, lambda k: 0.002, now)
    assert gov.k == 2
    others[0] = 1.0  # a busy process starts
    counts = drive(gov, 500, lambda k: 0.003 if k == 1 else 0.02, now)
    assert counts[-400:] == [1] * 400 and counts.count(2) <= 13  # within one PERIOD (0.25 s) of steps
    others[0] = 0.0
    counts = drive(gov, 500, lambda k: 0.002 if k == 2 else 0.003, now)
    assert counts[-400:] == [2] * 400


def test_governor_probes_in_between_and_keeps_the_faster_count():
    """others = 0.4 of 2 CPUs leaves 1.6 free: both counts allowed, measured step times decide."""
    gov = threads.Governor(2, meter=FakeMeter(lambda: 0.4))
    counts = drive(gov, 3000, lambda k: 0.004 if k == 1 else 0.005)
    assert counts[-1000:].count(1) > 950  # probes of 2 are rare and short
    events = [e for e, *_ in gov.history]
    assert "stay" in events and events.count("switch") <= 2
    gov = threads.Governor(2, meter=FakeMeter(lambda: 0.4))
    counts = drive(gov, 3000, lambda k: 0.005 if k == 1 else 0.004)
    assert counts[-1000:].count(2) > 950


def test_governor_without_a_meter_starts_at_the_budget_and_probes():
    gov = threads.Governor(2, meter=FakeMeter(lambda: None))
    gov.meter.last = None  # /proc/stat unreadable
    gov = threads.Governor(2, meter=gov.meter)
    counts = drive(gov, 1500, lambda k: 0.003 if k == 1 else 0.006)
    assert counts[0] == 2 and counts[-500:].count(1) > 480


def test_governor_ends_a_probe_after_one_ruinous_step():
    gov = threads.Governor(2, meter=FakeMeter(lambda: 0.4))
    drive(gov, 200, lambda k: 0.004 if k == 1 else 1.0)
    probes = [h for h in gov.history if h[0] == "stay"]
    assert probes and gov.steps[2] == len(probes)  # one step at 2 per probe, never three


def test_governor_ignores_marks_from_other_threads():
    gov = threads.Governor(2, meter=FakeMeter(lambda: 0.0))
    gov.start(owner=1)
    assert gov.step(owner=2) == gov.k and gov.last is None


def test_step_outside_a_context_does_nothing(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    threads.reset()
    threads.step()
    assert threads._governor is None


# --- the BLAS governor of MLPs (threads.blas_threads) --------------------------------------------------


class FakeWindowMeter(FakeMeter):
    """A FakeMeter whose window (seconds since its last sample) is set by the test."""

    def __init__(self, others, ncpus: int = 2, window: float = 0.1):
        super().__init__(others, ncpus)
        self.span, self.calls = window, 0

    def window(self):
        return self.span

    def sample(self):
        self.calls += 1
        return self.others()


def test_blas_governor_keeps_the_budget_under_light_load():
    """Others under half a CPU: the budget from the first step to the last, never a switch (the bits hold)."""
    gov = threads.BlasGovernor(2, meter=FakeWindowMeter(lambda: 0.45))
    counts = drive(gov, 2000, lambda k: 0.002)
    assert counts == [2] * 2000 and gov.history == []


def test_blas_governor_drops_to_one_thread_beside_a_busy_neighbour_and_stays():
    """OpenBLAS's two threads leave a busy neighbour ~0.6 of its core: that already means one thread; at one
    thread the neighbour shows as a whole CPU. The count never goes back while it stays."""
    gov = threads.BlasGovernor(2, meter=FakeWindowMeter(lambda: 0.6 if gov.k == 2 else 1.0))
    counts = drive(gov, 3000, lambda k: 0.003 if k == 1 else 0.01)
    assert counts[0] == 1  # the window before the start (fresh: 0.1 s) answered at once
    assert counts == [1] * 3000 and gov.history == [(1, 0.6)]


def test_blas_governor_after_a_stale_window_asks_within_the_first_steps():
    """A window longer than STALE may mix a neighbour long gone with the present: it only takes a thread
    away when others took most of a CPU throughout; otherwise the first answer comes FIRST seconds into the
    steps (the budget until then)."""
    answers = iter([0.6] + [1.0] * 1000)  # the long window: a neighbour for part of it; then busy
    gov = threads.BlasGovernor(2, meter=FakeWindowMeter(lambda: next(answers), window=30.0))
    counts = drive(gov, 200, lambda k: 0.004 if k == 1 else 0.01)
    assert counts[:5] == [2] * 5 and counts[-150:] == [1] * 150
    assert counts.count(2) <= gov.FIRST / 0.01 + 1
    answers = iter([0.9] + [0.0] * 1000)  # busy throughout the long window, gone now
    gov = threads.BlasGovernor(2, meter=FakeWindowMeter(lambda: next(answers), window=30.0))
    counts = drive(gov, 200, lambda k: 0.003)
    assert counts[0] == 1 and counts[-150:] == [2] * 150
    answers = iter([0.2] + [0.0] * 1000)  # a quiet long window never moves the count
    gov = threads.BlasGovernor(2, meter=FakeWindowMeter(lambda: next(answers), window=30.0))
    assert drive(gov, 200, lambda k: 0.003) == [2] * 200


def test_blas_governor_comes_back_only_when_the_neighbour_has_gone():
    others = [1.0]
    gov = threads.BlasGovernor(2, meter=FakeWindowMeter(lambda: others[0]))
    now = [0.0]
    assert drive(gov, 300, lambda k: 0.003, now)[-1] == 1
    others[0] = 0.4  # in between: nothing moves
    assert drive(gov, 300, lambda k: 0.003, now) == [1] * 300
    others[0] = 0.1  # gone
    assert drive(gov, 300, lambda k: 0.002, now)[-200:] == [2] * 200
    assert [k for k, _ in gov.history] == [1, 2]


def test_blas_governor_on_four_cpus_gives_up_only_what_the_neighbours_take():
    gov = threads.BlasGovernor(4, meter=FakeWindowMeter(lambda: 1.0, ncpus=4))
    assert drive(gov, 100, lambda k: 0.003)[-1] == 3


def _blas_count() -> int:
    """The thread count of the BLAS libraries the engine controls (NumPy's; SciPy may bring its own)."""
    counts = {lib["num_threads"] for lib in threads._blas_controller().info() if lib["user_api"] == "blas"}
    assert len(counts) == 1
    return counts.pop()


@pytest.mark.skipif(threads._blas_controller() is None, reason="threadpoolctl finds no BLAS here")
def test_blas_threads_sets_the_count_and_restores_blas_own(monkeypatch):
    from threadpoolctl import threadpool_limits

    monkeypatch.setattr(threads, "budget", lambda: 2)
    threads.reset()
    with threadpool_limits(2, "blas"):  # BLAS's own count, whatever this machine has
        monkeypatch.setenv(threads.ENV, "1")
        with threads.blas_threads():
            assert _blas_count() == 1 and threads.threads() == 1
            with threads.blas_threads():  # nested: nothing changes
                assert _blas_count() == 1
        assert _blas_count() == 2
        monkeypatch.delenv(threads.ENV)
        gov = threads.blas_governor()
        gov.meter = FakeWindowMeter(lambda: 1.0)
        with threads.blas_threads():  # the budget until the first training step asks: a busy neighbour
            assert _blas_count() == 2
            threads.step()
            assert _blas_count() == 1 and threads.threads() == 1
        assert _blas_count() == 2  # BLAS's own count between contexts
        gov.meter = FakeWindowMeter(lambda: 0.0)
        with threads.blas_threads():  # the governor's last count, until a step says the neighbour left
            assert _blas_count() == 1
            threads.step()
            assert _blas_count() == 2
            with threads.own_threads():  # a CNN inside (a teacher): BLAS single-threaded, as own_threads wants
                assert _blas_count() == 1
                with threads.blas_threads():
                    assert _blas_count() == 1
            assert _blas_count() == 2
        assert _blas_count() == 2
    threads.reset()


def test_an_mlp_runs_inside_blas_threads_and_a_cnn_inside_own_threads(monkeypatch):
    seen = []
    monkeypatch.setattr(threads, "blas_threads", lambda: (seen.append("blas"), contextlib.nullcontext())[1])
    monkeypatch.setattr(threads, "own_threads", lambda: (seen.append("own"), contextlib.nullcontext())[1])
    mlp = Net(ir.model_from_layers((6,), [("dense", {"units": 3}), ("softmax", {})]))
    cnn = Net(ir.model_from_layers((1, 6, 6), CNN))
    mlp.forward(np.zeros((2, 6)))
    cnn.forward(np.zeros((2, 1, 6, 6)))
    assert seen == ["blas", "own"]


# --- results do not depend on the thread count -------------------------------------------------------


CNN = [("conv2d", {"filters": 4, "kernel": 3, "padding": "same"}), ("batchnorm", {}), ("relu", {}),
       ("maxpool", {"kernel": 2}), ("conv2d", {"filters": 5, "kernel": 3}), ("relu", {}), ("flatten", {}),
       ("dense", {"units": 24}), ("elu", {}), ("dropout", {"rate": 0.2}), ("dense", {"units": 3}), ("softmax", {})]


def _train(model: ir.Model, dtype, x, y, switch) -> dict[str, np.ndarray]:
    """Four Adam steps inside one context; ``switch(i)`` sets the thread count before step ``i``."""
    net = Net(model, dtype=dtype, seed=3)
    opt = Adam(net.params, net.trainable, lr=1e-2)
    with net.threads():
        for i in range(4):
            switch(i)
            _, grads = net.loss_and_grads(x, y)
            opt.step(net.params, grads)
    return {k: v.copy() for k, v in net.params.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bits_do_not_depend_on_the_thread_count(monkeypatch, dtype):
    """Every pass and product split (no size thresholds), 1, 2 or 3 threads, or a count changed at every
    step as the governor may: the same weights to the bit."""
    monkeypatch.setattr(threads, "PARALLEL_MIN", 1)
    monkeypatch.setattr(threads, "MATMUL_MIN", 1)
    monkeypatch.setattr(threads, "pieces", lambda: 2)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 255, (9, 2, 10, 10)).astype(np.uint8)
    y = rng.integers(0, 3, 9)
    model = ir.model_from_layers((2, 10, 10), CNN)
    results = []
    for fixed in ("1", "2", "3", None):
        if fixed is None:
            monkeypatch.delenv(threads.ENV, raising=False)
        else:
            monkeypatch.setenv(threads.ENV, fixed)
        threads.reset()

        def switch(i, fixed=fixed):
            if fixed is None:  # what the governor may do between steps
                threads.governor().k = 1 + i % 2
                threads.governor().step = lambda owner: threads.governor().k

        results.append(_train(model, dtype, x, y, switch))
    threads.reset()
    for other in results[1:]:
        for k, v in results[0].items():
            assert np.array_equal(v, other[k]), k


def test_matmul_pieces_agree_with_numpy(monkeypatch):
    """Row, column and reduction cuts, direct BLAS and NumPy pieces, transposed views and a layout
    BLAS cannot read: all equal np.matmul to rounding."""
    monkeypatch.setenv(threads.ENV, "2")
    monkeypatch.setattr(threads, "MATMUL_MIN", 1)
    monkeypatch.setattr(threads, "pieces", lambda: 3)
    rng = np.random.default_rng(0)
    big = rng.standard_normal((400, 400))
    cases = [(big[:300, :40], big[:40, :20]),      # rows
             (big[:20, :40], big[:40, :300]),      # columns
             (big[:6, :300], big[:300, :7]),       # reduction
             (big[:40, :300].T, big[:40, :30]),    # a transposed view
             (big[:30, ::2][:, :50], big[:50, :30]),  # strides BLAS cannot take: NumPy pieces
             (rng.standard_normal((2, 30, 8)), rng.standard_normal((8, 40)))]  # batched
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        for a, b in cases:
            a, b = a.astype(dtype), b.astype(dtype)
            out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]), dtype)
            with threads.own_threads():
                threads.matmul(a, b, out)
            np.testing.assert_allclose(out, np.matmul(a, b), rtol=tol, atol=tol)


def test_direct_blas_rejects_what_it_cannot_read():
    blas = crew.blas()
    if not blas.ok:
        pytest.skip("no ILP64 cblas_?gemm64_ in the BLAS NumPy loaded")
    a, b = np.ones((4, 6), np.float32), np.ones((6, 5), np.float32)
    out = np.empty((4, 5), np.float32)
    assert blas.pieces(a, b, [out], "m", [(0, 2), (2, 4)]) is not None
    assert blas.pieces(a, b.astype(np.float64), [out], "m", [(0, 4)]) is None  # mixed dtypes
    assert blas.pieces(a, b, [out.T.copy().T], "m", [(0, 4)]) is None  # a column-major out
    assert blas.pieces(a[:, ::2], b[:3], [out], "m", [(0, 4)]) is None  # no unit stride
    assert blas.pieces(a.astype(np.int64), b, [out], "m", [(0, 4)]) is None


def test_a_failing_piece_is_raised_after_every_piece_finished(monkeypatch):
    monkeypatch.setenv(threads.ENV, "2")
    finished = []

    def fn(lo, hi):
        if lo == 0:
            raise ValueError("piece failed")
        threading.Event().wait(0.05)
        finished.append((lo, hi))

    with threads.own_threads(), pytest.raises(ValueError, match="piece failed"):
        threads.parallel(fn, 10, 1 << 20)
    assert finished == [(5, 10)]  # the worker's piece ran to its end before the error surfaced


def test_pieces_of_one_call_from_two_threads_at_once(monkeypatch):
    """A second thread that finds the crew busy runs its pieces itself: both finish, both right."""
    monkeypatch.setenv(threads.ENV, "2")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((256, 300)).astype(np.float32), rng.standard_normal((300, 256)).astype(np.float32)
    outs = [np.empty((256, 256), np.float32) for _ in range(2)]

    def work(out):
        with threads.own_threads():
            for _ in range(20):
                threads.matmul(a, b, out)

    ts = [threading.Thread(target=work, args=(o,)) for o in outs]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], a @ b, rtol=1e-4, atol=1e-3)


def test_python_and_machine_code_workers_give_the_same_bits(monkeypatch):
    """Workers before training are Python threads, after its first step machine code (with numba):
    the same cblas calls either way."""
    if not crew.native().ok:
        pytest.skip("needs numba, glibc and NumPy's ILP64 cblas")
    monkeypatch.setenv(threads.ENV, "2")
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((128, 784)).astype(np.float32), rng.standard_normal((784, 256)).astype(np.float32)
    outs = []
    for trained in (False, True):
        monkeypatch.setattr(crew, "_training", trained)
        monkeypatch.setattr(threads, "_crew", None)
        out = np.empty((128, 256), np.float32)
        with threads.own_threads():
            threads.matmul(a, b, out)
            kinds = {w.native is not None for w in threads._crew.workers}
        assert kinds == {trained}
        outs.append(out)
    monkeypatch.setattr(threads, "_crew", None)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_evaluation_alone_never_imports_numba(tmp_path):
    import subprocess
    import sys

    code = ("import sys, numpy as np, dnnspec\n"
            "from dnnspec import ir\n"
            "m = ir.model_from_layers((1, 28, 28), [('flatten', {}), ('dense', {'units': 256}), ('relu', {}),\n"
            "    ('dense', {'units': 10}), ('softmax', {})])\n"
            "net = dnnspec.compile(m)\n"
            "x = np.zeros((512, 1, 28, 28), np.uint8)\n"
            "net.predict(x); net.evaluate(x, np.zeros(512, int))\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, threads.ENV: "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
