#!/usr/bin/env python
"""Latency and memory benchmark: `python benchmarks/bench_latency_memory.py --quick` (same as
`latent-replay bench --quick`; see `--help`)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from latent_replay.apps.bench.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
