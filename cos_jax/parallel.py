"""Data parallelism: a one-axis device mesh and the placement of host batches on it."""

import jax
from jax.sharding import NamedSharding, PartitionSpec


def data_mesh() -> jax.sharding.Mesh:
  """A one-axis mesh, 'data', over every device of every process.

  Its axis is of the Auto type: XLA propagates the batch sharding through the model (the SNN's
  reshapes of [steps, B, ...] included) without sharding annotations in the model code.
  """
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def shard_batch(mesh: jax.sharding.Mesh, *local_arrays):
  """Places this process's share of a global batch on the mesh, split along the batch axis.

  Every process passes its own contiguous share (the input pipeline reads only that); together
  they make global arrays of process_count times the local batch.
  """
  sharding = NamedSharding(mesh, PartitionSpec('data'))
  return tuple(
    jax.make_array_from_process_local_data(
      sharding, a, (len(a) * jax.process_count(),) + a.shape[1:]
    )
    for a in local_arrays
  )


def shard_global_batch(mesh: jax.sharding.Mesh, *arrays):
  """Places a global batch that every process holds whole: each contributes its share."""
  count, index = jax.process_count(), jax.process_index()
  return shard_batch(
    mesh, *(a[index * (len(a) // count) : (index + 1) * (len(a) // count)] for a in arrays)
  )


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def replicated_shapes(tree, mesh: jax.sharding.Mesh):
  """The shapes and dtypes of a pytree's arrays, placed on every device of the mesh: what a
  checkpoint restores into, each process filling its own devices (a restore onto one device
  and a copy to the others would need transfers between hosts)."""
  sharding = NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(
    lambda x: (
      jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding) if hasattr(x, 'shape') else x
    ),  # a Python number (the step of a new state) restores as one
    tree,
  )


def check_divisible(batch_size: int, name: str) -> None:
  if batch_size % jax.device_count():
    raise ValueError(
      f'{name}={batch_size} must be divisible by the {jax.device_count()} devices it is split over.'
    )
