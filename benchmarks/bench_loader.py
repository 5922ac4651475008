"""Loader throughput: batches/s (cold and warm), time to assemble one batch, peak RSS.

Usage:
    python benchmarks/bench_loader.py [--config configs/data/demo.yaml] [--data STORE]
                                      [--batches 50] [--repeats 5] [--set key=value ...]

"Cold" opens the store and builds a fresh iterator (including the in-memory
cache, if enabled) and times the first `--batches` batches; "warm" times the
next `--batches` from the same iterator. Each figure is the median of
`--repeats` runs. Both read modes are measured: in-memory cache and lazy
per-batch reads from the store.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

from gencast_rmmd.config import DataFileConfig, load_config
from gencast_rmmd.data.batches import make_iterator
from gencast_rmmd.data.source import DataSource
from gencast_rmmd.errors import UserInputError

REPO = Path(__file__).resolve().parent.parent


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(config, batches: int) -> dict:
    started = time.perf_counter()
    source = DataSource.open(config)
    iterator = make_iterator(source)
    opened = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    cold = time.perf_counter() - started
    warm_start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    warm = time.perf_counter() - warm_start
    iterator.close()
    single = []
    for step in range(5):
        begin = time.perf_counter()
        iterator.batch_at(step)
        single.append(time.perf_counter() - begin)
    return {"open_s": opened - started, "cold_batches_per_s": batches / cold,
            "warm_batches_per_s": batches / warm, "assemble_one_batch_ms": 1000 * statistics.median(single)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/data/demo.yaml"))
    parser.add_argument("--data", default=None)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args()
    try:
        results = {}
        for mode in ("true", "false"):
            config = load_config(args.config, DataFileConfig,
                                 [*args.overrides, f"data.loader.cache_in_memory={mode}"], args.data).data
            runs = [measure(config, args.batches) for _ in range(args.repeats)]
            label = "in_memory" if mode == "true" else "lazy"
            results[label] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    results["batch_size"] = config.loader.batch_size
    results["peak_rss_mib"] = peak_rss_mib()
    for label in ("in_memory", "lazy"):
        figures = results[label]
        print(f"{label:>9}: open {figures['open_s']:.2f} s | cold {figures['cold_batches_per_s']:.1f} batches/s | "
              f"warm {figures['warm_batches_per_s']:.1f} batches/s | one batch {figures['assemble_one_batch_ms']:.1f} ms")
    print(f"batch size {results['batch_size']}, peak RSS {results['peak_rss_mib']:.0f} MiB, "
          f"median of {args.repeats} runs of {args.batches} batches")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
