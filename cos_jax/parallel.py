"""Data parallelism: a one-axis device mesh and the placement of host batches on it."""

import jax
from jax.sharding import NamedSharding, PartitionSpec


def data_mesh() -> jax.sharding.Mesh:
  """A one-axis mesh, 'data', over every device of every process.

  Its axis is of the Auto type: XLA propagates the batch sharding through the model (the SNN's
  reshapes of [steps, B, ...] included) without sharding annotations in the model code.
  """
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(mesh: jax.sharding.Mesh, *arrays):
  """Places global-batch host arrays on the mesh, split along their first (batch) axis.

  Every process holds the same global batch (the batch order is a function of the seed and
  the step); each contributes its contiguous share to the devices it owns.
  """
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  count, index = jax.process_count(), jax.process_index()
  return tuple(
      jax.make_array_from_process_local_data(
          sharding, a[index * (len(a) // count):(index + 1) * (len(a) // count)], a.shape)
      for a in arrays)


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def check_divisible(batch_size: int, name: str) -> None:
  if batch_size % jax.device_count():
    raise ValueError(f'{name}={batch_size} must be divisible by the {jax.device_count()} devices '
                     'it is split over.')
