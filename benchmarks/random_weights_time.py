#!/usr/bin/env python
"""How long `random_weights` takes (it runs on every `--weights random` command): the timing figure
that tests/test_random_init.py used to bound at 2 s, now counted there (one conv pass per layer over
4 frames) and measured here. `python benchmarks/random_weights_time.py [repeats]`"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from latent_replay.models.random_init import random_weights  # noqa: E402

if __name__ == "__main__":
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        random_weights(seed=seed)
        times.append(time.perf_counter() - start)
    times.sort()
    print(f"random_weights (128 px, 4 calibration frames): median {times[len(times) // 2]:.3f} s, "
          f"min {times[0]:.3f} s, max {times[-1]:.3f} s over {repeats} runs")
