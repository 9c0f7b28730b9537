#!/usr/bin/env python
"""Latency and memory benchmark, the step-graph engine against onnxruntime-training and PyTorch:
`python benchmarks/bench_latency_memory.py --quick` (same as `latent-replay bench --quick`; add
`--training-python PATH` for the onnxruntime-training row, `--threads 2,0` for the scaling; see
`--help`)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from latent_replay.apps.bench.command import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
