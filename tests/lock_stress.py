"""Many processes start at the same instant and try to take one work-directory lock.

`contend(workdir, starts)` starts `starts` processes that wait on a barrier,
call `WorkdirLock.acquire` together, then wait on a second barrier (so a holder
keeps the lock until every contender has tried) before releasing. It returns
how many acquired it, how many were refused, and any other errors. With
`stale=True` the work directory starts with the lock of a finished process, so
every contender races to take over the same stale lock.

    python tests/lock_stress.py --starts 1000 --batch 50 [--stale]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from gencast_rmmd.errors import UserInputError
from pipelines.lock import WorkdirLock


def _contender(workdir: str, start, tried, results) -> None:
    lock = WorkdirLock(Path(workdir), log=lambda _: None)
    start.wait()
    try:
        lock.acquire()
    except UserInputError:
        outcome = "refused"
    except Exception as error:  # reported, not hidden: the stress test fails on it
        outcome = f"error: {type(error).__name__}: {error}"
    else:
        outcome = "held"
    tried.wait()
    lock.release()
    results.put(outcome)


def _dead_pid() -> int:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    return int(finished.stdout)


def contend(workdir: Path, starts: int, stale: bool = False) -> dict[str, int]:
    """Start `starts` processes together on `workdir`'s lock; counts of held, refused and other outcomes."""
    if stale:
        (workdir / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                   "started": "earlier"}))
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold JAX threads
    start, tried, results = context.Barrier(starts), context.Barrier(starts), context.Queue()
    processes = [context.Process(target=_contender, args=(str(workdir), start, tried, results))
                 for _ in range(starts)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    counts = {"held": outcomes.count("held"), "refused": outcomes.count("refused")}
    counts["other"] = len(outcomes) - counts["held"] - counts["refused"]
    if counts["other"]:
        counts["first_other"] = next(o for o in outcomes if o not in ("held", "refused"))
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--stale", action="store_true")
    args = parser.parse_args()
    double, trials = 0, 0
    for first in range(0, args.starts, args.batch):
        with tempfile.TemporaryDirectory() as workdir:
            counts = contend(Path(workdir), min(args.batch, args.starts - first), stale=args.stale)
        trials += 1
        double += counts["held"] > 1
        if counts["held"] != 1 or counts["other"]:
            print(f"batch {trials}: {counts}", flush=True)
    print(f"{args.starts} starts in {trials} simultaneous batches of {args.batch}"
          f"{' on a stale lock' if args.stale else ''}: {double} batches with more than one holder")


if __name__ == "__main__":
    main()
