"""``dnnspec search SPEC``: expand a search space, check every candidate, train the valid ones, rank them.

A thin skin over dnnspec.search: ``space.read`` -> ``runner.pick`` -> ``runner.check_all``
(every candidate through the normal front end and the budget, before any training) ->
``runner.run_search`` (trials in worker processes) -> leaderboard.csv / .md, curves.png,
best.dnn in ``--out`` (default runs/search_<spec name>). ``--resume`` continues a search
in that folder: trials whose result is recorded are not run again. ``--backend ray`` runs the
trials as Ray tasks (a local Ray instance, or the cluster at ``--address``). See docs/search.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

STRATEGIES = ("grid", "random", "halving")
BACKENDS = ("local", "ray")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="a .dnn file with choice(...), ranges, choose blocks, budget")
    parser.add_argument("--trials", type=int, default=10, metavar="N",
                        help="candidates drawn by random and halving search (default 10)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="random",
                        help="grid: every candidate; random: N draws; halving: successive halving (default random)")
    parser.add_argument("--workers", type=int, metavar="K",
                        help="trials trained at once (default 1; on a Ray cluster: as many as it has CPUs)")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: worker processes here; ray: Ray tasks (pip install 'dnnspec[ray]')")
    parser.add_argument("--address", metavar="ADDR",
                        help="ray: the cluster's HOST:PORT (default: a local Ray instance, stopped at the end)")
    parser.add_argument("--out", metavar="DIR", help="search folder (default runs/search_<spec name>)")
    parser.add_argument("--resume", action="store_true", help="continue the search in DIR")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="search seed: draws and trial seeds")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs of a full trial (default: the spec's)")
    parser.add_argument("--min-epochs", type=int, default=1, metavar="N", help="halving: epochs of the first rung")
    parser.add_argument("--eta", type=int, default=2, metavar="N", help="halving: keep the best 1/N each rung")
    parser.add_argument("--data", metavar="SOURCE", help="data source, as train --data takes it")
    parser.add_argument("--data-dir", metavar="DIR", help="folder with downloaded data sets")
    parser.add_argument("--limit", type=int, metavar="N", help="use only the first N training examples")
    parser.add_argument("--check-only", action="store_true", help="check the candidates and stop")


def _check_args(args: argparse.Namespace) -> None:
    from ..errors import UsageError

    for flag in ("trials", "workers", "epochs", "min_epochs", "limit"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1, found {v}")
    if args.trials > 10_000:
        raise UsageError(f"--trials is at most 10000, found {args.trials}")
    if args.eta < 2:
        raise UsageError(f"--eta must be at least 2, found {args.eta}")
    if not 0 <= args.seed < 2**32:
        raise UsageError(f"--seed must be in [0, 2^32), found {args.seed}")
    if args.address is not None and args.backend != "ray":
        raise UsageError("--address is the Ray cluster's address: add --backend ray")


def _settings_file(out: Path, args: argparse.Namespace, text: str) -> None:
    """Record what the search is (DIR/search.json); a resumed search must be the same one."""
    from ..errors import UsageError

    want = {"spec_sha256": hashlib.sha256(text.encode()).hexdigest(), "strategy": args.strategy,
            "trials": args.trials, "seed": args.seed, "epochs": args.epochs, "min_epochs": args.min_epochs,
            "eta": args.eta, "data": args.data, "limit": args.limit}
    path = out / "search.json"
    if path.exists() and not args.resume:
        raise UsageError(f"{out}: already holds a search; add --resume to continue it, or choose another --out")
    if args.resume:
        if not path.exists():
            raise UsageError(f"{out}: no search to resume (no search.json); run without --resume first")
        have = json.loads(path.read_text())
        diff = [k for k in want if have.get(k) != want[k]]
        if diff:
            raise UsageError(f"{out}: the search there differs in {', '.join(diff)}; resume with the same "
                             "spec and flags, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want, indent=1) + "\n")


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.backend == "ray":  # before any work: Ray installed, the address well-formed
        from ..search import ray_backend

        ray_backend.require(args.address)
    elif not args.check_only:  # the workers' fork server imports what trials need while this process checks
        from ..search import workers

        workers.start_server()
    from ..errors import DataError
    from ..frontend import read_spec
    from ..search import runner, space

    text = read_spec(args.spec)
    sp = space.read(text, args.spec)
    picked = runner.pick(sp, args.strategy, args.trials, args.seed)
    cands = runner.check_all(sp, picked)
    out = sys.stdout
    out.write(f"search space {args.spec}: {len(sp.dims)} dimensions, "
              f"{sp.size if sp.size is not None else 'continuous'} points\n")
    out.write("\n".join(runner.check_report(cands, len(picked))) + "\n")
    valid = [c for c in cands if c.problem is None]
    if not valid:
        raise DataError("no valid candidate: fix the space (the reasons are listed above)")
    if args.check_only:
        return 0
    dest = Path(args.out) if args.out else Path("runs") / f"search_{Path(args.spec).stem}"
    _settings_file(dest, args, text)
    max_epochs = args.epochs or max(int(_epochs(c)) for c in valid)
    s = runner.Settings(out=dest, strategy=args.strategy, seed=args.seed, workers=args.workers, epochs=max_epochs,
                        min_epochs=args.min_epochs, eta=args.eta, data=args.data, data_dir=args.data_dir,
                        limit=args.limit, resume=args.resume, log=out, backend=args.backend,
                        address=args.address)
    rows = runner.run_search(cands, s, max_epochs)
    header, table = runner.leaderboard(rows, cands, sp)
    ok = [r for r in rows if "error" not in r]
    best = next((c for c in cands if ok and c.index == ok[0]["index"]), None)
    written = runner.write_results(dest, header, table, best, sp)
    out.write(runner.terminal_table(header, table) + "\n")
    out.write("wrote " + ", ".join(str(p) for p in written) + "\n")
    if best is not None:
        run_dir = dest / "trials" / f"{best.index:04d}"
        out.write(f"best: trial {best.index:04d}; export it with: dnnspec export {run_dir}\n")
    return 0


def _epochs(c) -> int:
    from ..frontend import parse

    return int(parse(c.text).train["epochs"])
