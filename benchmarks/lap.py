"""Milliseconds per linear assignment: jaxlab.merge.lap (jitted, on the default device) vs
scipy.optimize.linear_sum_assignment (host), same run, same matrices.

  python benchmarks/lap.py [--sizes 64,128,256,512,1024] [--repeats 5]

Matrices: i.i.d. normal (what weight matching meets) and integer costs in 0..3 (many ties).
Prints the median of --repeats solves after compilation, the compile time, and the ratio
scipy / jaxlab (> 1: jaxlab faster). Both must reach the same optimum (checked).
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxlab.merge import lap  # pylint: disable=wrong-import-position


def median_ms(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="64,128,256,512,1024")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{os.cpu_count()} CPU cores; jax {jax.__version__}")
  solve = jax.jit(lap.linear_sum_assignment)
  rng = np.random.default_rng(0)
  for kind in ("normal", "ties"):
    for n in (int(s) for s in args.sizes.split(",")):
      cost = (rng.normal(size=(n, n)) if kind == "normal" else
              rng.integers(0, 4, (n, n))).astype(np.float32)
      on_device = jnp.asarray(cost)
      t0 = time.perf_counter()
      cols = np.asarray(solve(on_device))
      compile_s = time.perf_counter() - t0
      rows, ref = scipy.optimize.linear_sum_assignment(cost)
      assert abs(cost[np.arange(n), cols].sum() - cost[rows, ref].sum()) <= 1e-3 * n
      ours = median_ms(lambda: solve(on_device).block_until_ready(), args.repeats)
      theirs = median_ms(lambda: scipy.optimize.linear_sum_assignment(cost), args.repeats)
      print(f"{kind:6s} n={n:5d}  jaxlab {ours:9.2f} ms  scipy {theirs:9.2f} ms  "
            f"ratio scipy/jaxlab {theirs / ours:5.2f}  (first call with compile {compile_s:.1f} s)")


if __name__ == "__main__":
  main()
