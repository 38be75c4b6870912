"""Milliseconds per weight matching and per STE step (jaxlab.methods.merge), same run.

  python benchmarks/merge_step.py [--widths 128,512] [--repeats 5]

For MLPs 64-W-W-W-10 (W = 128: the §5(g) digits model; 512: Git Re-Basin's MNIST MLP width)
with two independent random initialisations:
  - weight matching to convergence (at most 100 sweeps, from the identity): jaxlab's jitted
    `matching.weight_matching` (one lax.while_loop, the solver of jaxlab.merge.lap) against
    the merging code's host loop written here in numpy with
    scipy.optimize.linear_sum_assignment (the official code's structure: per group, build
    the cost on the host, solve, keep on gain > 1e-12). Both reach a local optimum of the
    same objective; the objective values are printed;
  - one STE step (weight matching warm-started from the previous step's permutations, the
    midpoint forward and backward, one SGD step) on a batch of 500 8x8 images, jitted as the
    training loop jits it.
Prints medians after compilation and the ratio host / jaxlab (> 1: jaxlab faster).
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

import jaxlab  # pylint: disable=wrong-import-position
from jaxlab.data.tasks import Spec  # pylint: disable=wrong-import-position
from jaxlab.merge import matching  # pylint: disable=wrong-import-position
from jaxlab.methods import merge  # pylint: disable=wrong-import-position


def host_weight_matching(spec, flat_a, flat_b, max_iter, seed=0):
  """The official loop: numpy costs, scipy's assignment, random group order per sweep."""
  perms = {g: np.arange(n) for g, n in spec.sizes.items()}
  names = sorted(spec.groups)
  rng = np.random.default_rng(seed)
  for _ in range(max_iter):
    progress = False
    for index in rng.permutation(len(names)):
      group = names[index]
      n = spec.sizes[group]
      cost = np.zeros((n, n))
      for path, axis in spec.groups[group]:
        if path[0] != "params":
          continue
        wb = flat_b[path]
        for other_axis, other in spec.axes_of(path).items():
          if other != group:
            wb = np.take(wb, perms[other], axis=other_axis)
        wa = np.moveaxis(flat_a[path], axis, 0).reshape(n, -1)
        cost += wa @ np.moveaxis(wb, axis, 0).reshape(n, -1).T
      _, new = scipy.optimize.linear_sum_assignment(cost, maximize=True)
      gain = cost[np.arange(n), new].sum() - cost[np.arange(n), perms[group]].sum()
      if gain > 1e-12:
        perms[group], progress = new, True
    if not progress:
      break
  return perms


def median_ms(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--widths", default="128,512")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind})")
  for width in (int(w) for w in args.widths.split(",")):
    config = jaxlab.load_config("configs/merge.py:digits,method=merge_ste",
                                {"model.hidden": (width,) * 3})
    spec = Spec(input_shape=(8, 8, 1), num_classes=10)
    pspec = merge.permutation_spec(config, spec)
    model = jaxlab.models.build(config.model, 10)
    a, b = (dict(model.init(jax.random.key(s), jnp.zeros((2, 8, 8, 1)))) for s in (1, 2))
    from flax import traverse_util  # pylint: disable=g-import-not-at-top
    flat_a = {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(a).items()}
    flat_b = {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(b).items()}

    solve = jax.jit(lambda a, b: matching.weight_matching(pspec, a, b, jax.random.key(0), 100))
    t0 = time.perf_counter()
    perms = jax.block_until_ready(solve(a, b))
    compile_s = time.perf_counter() - t0
    jax_ms = median_ms(lambda: solve(a, b), args.repeats)
    host_ms = median_ms(lambda: host_weight_matching(pspec, flat_a, flat_b, 100),
                        args.repeats)
    host = host_weight_matching(pspec, flat_a, flat_b, 100)
    objective = lambda p: float(matching.objective(pspec, a, b, p))
    print(f"W={width}: weight matching jaxlab {jax_ms:.1f} ms (compile {compile_s:.1f} s), "
          f"host numpy+scipy {host_ms:.1f} ms, ratio host/jaxlab {host_ms / jax_ms:.2f}; "
          f"objective jaxlab {objective(perms):.3f} host "
          f"{objective({g: jnp.asarray(p) for g, p in host.items()}):.3f} identity "
          f"{objective(matching.identity(pspec)):.3f}")

    method = jaxlab.get_method("merge_ste")
    state = method.init(config, jax.random.key(0), spec).replace(
        frozen={"model_a": a, "model_b": b}, params=a["params"])
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(size=(500, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 10, 500), jnp.int32)}
    step = jax.jit(lambda s, x: method.train_step(s, x, jax.random.key(3), config=config,
                                                  spec=spec))
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(step(state, batch))
    compile_s = time.perf_counter() - t0
    holder = {"state": state}

    def one():
      holder["state"], metrics = step(holder["state"], batch)
      return metrics
    ste_ms = median_ms(one, max(args.repeats, 10))
    print(f"W={width}: STE step (batch 500, warm-started weight matching) {ste_ms:.1f} ms "
          f"(compile {compile_s:.1f} s)")


if __name__ == "__main__":
  main()
