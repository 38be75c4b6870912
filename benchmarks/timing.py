"""What the step benchmarks share: compile a jitted step once, then time it."""

import statistics
import time

import jax


def time_step(step, state, inputs, steps: int):
  """Compiles `step(state, inputs) -> (state, metrics)` ahead of time, runs it once, then
  times `steps` runs. Returns ms (median), compile_s, gflop and gbytes (XLA's cost analysis),
  temp_mib (XLA's temporary memory) and the last metrics."""
  t0 = time.perf_counter()
  compiled = step.lower(state, inputs).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  state, _ = compiled(state, inputs)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, inputs)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  return {"ms": 1e3 * statistics.median(times), "compile_s": compile_s,
          "gflop": cost.get("flops", float("nan")) / 1e9,
          "gbytes": cost.get("bytes accessed", float("nan")) / 1e9,
          "temp_mib": getattr(memory, "temp_size_in_bytes", 0) / 2**20, "metrics": metrics}
