"""All device placement in one place: the mesh, replicated state, sharded batches.

One mesh axis, `data`, over every device of every process. Parameters,
optimizer state and the (small) datasets are replicated; each batch is
sharded along its leading axis (examples, or tasks of a meta-batch). Under
`jax.jit` the same code runs on one CPU, a GPU, a TPU host or a multi-host pod.
"""

from typing import Any, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxlab.errors import UserError

DATA_AXIS = "data"


def initialize_distributed(config) -> None:
  """Joins a multi-process run when `config.distributed.enabled`.

  With `coordinator_address` empty, JAX detects the cluster (Cloud TPU pods,
  SLURM, ...). On CPU, cross-process collectives use gloo.
  """
  cfg = config.distributed
  if not cfg.enabled:
    return
  if jax.distributed.is_initialized():
    return
  try:
    if cfg.coordinator_address:
      if jax.config.jax_platforms in (None, "", "cpu") or cfg.get("cpu_collectives", False):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(cfg.coordinator_address, num_processes=cfg.num_processes,
                                 process_id=cfg.process_id)
    else:
      jax.distributed.initialize()
  except (ValueError, RuntimeError) as e:
    hint = ("" if cfg.coordinator_address else "; outside a cluster JAX detects (Cloud TPU, "
            "SLURM, ...) give distributed.coordinator_address, num_processes and process_id")
    raise UserError(f"distributed.enabled=True, but joining the run failed "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}){hint}") from None


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Host numpy arrays -> global arrays replicated on every device (multi-process safe)."""
  sharding = replicated(mesh)
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Inside jit: constrain every leaf's leading axis to the `data` mesh axis."""
  def constrain(x):
    if x.ndim == 0:
      return x
    if x.shape[0] % mesh.shape[DATA_AXIS]:
      raise UserError(f"a batch axis of size {x.shape[0]} does not divide over the "
                      f"{mesh.shape[DATA_AXIS]} devices of the data axis")
    spec = P(DATA_AXIS, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  return jax.tree.map(constrain, batch)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (example) axis over `data`, the rest whole: how a streamed batch is laid out."""
  return NamedSharding(mesh, P(DATA_AXIS))


def process_rows(mesh: Mesh, global_rows: int) -> Tuple[int, int]:
  """[lo, hi): the rows of a global batch this process's devices hold (each process reads
  and decodes only these)."""
  if global_rows % mesh.shape[DATA_AXIS]:
    raise UserError(f"a batch of {global_rows} does not divide over the "
                    f"{mesh.shape[DATA_AXIS]} devices of the data axis")
  slices = batch_sharding(mesh).addressable_devices_indices_map((global_rows,)).values()
  lo = min(s[0].start or 0 for s in slices)
  hi = max(global_rows if s[0].stop is None else s[0].stop for s in slices)
  return lo, hi


def put_batch(local: Any, mesh: Mesh, global_rows: int) -> Any:
  """This process's rows of a batch (host numpy) -> one global array per leaf, sharded on
  `data` (multi-process: each process passes its `process_rows`)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, np.asarray(x), (global_rows,) + np.shape(x)[1:]), local)
