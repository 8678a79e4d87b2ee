"""The activation layer shared by the ANN and the SNN.

In the ANN (`spiking=None`) it is QCFS. After conversion the same layer, with the same threshold
parameter, is a layer of IF neurons driven over a chunk of time steps: its input then has an
explicit leading time axis, of length `spiking.steps`, or of length 1 for a current that is the same
at every step (the first layer's, computed once from the analog image).

The membrane potentials live in the `membrane` variable collection, the COS shifts in `shifts`
and the per-neuron counters behind the offset-spike statistics in `spike_stats`: the caller
threads them through `apply(..., mutable=...)`, so a whole simulation is a pure function.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cos_jax import neuron
from cos_jax.qcfs import qcfs

INITIAL_THRESHOLD = 8.0
"""The QCFS threshold lambda at initialisation (SPEC section 1)."""


@dataclasses.dataclass(frozen=True)
class Spiking:
  """How the activation layers of a converted network run one chunk of time steps.

  Attributes:
    steps: the number of time steps in this chunk.
    calibration_rounds: 0 to start from the potentials in the `membrane` collection; k >= 1 to
      calibrate with k rounds of COS on this chunk's currents first (the chunk is then the rho
      pre-simulation steps), writing the shifts to the `shifts` collection.
    statistics_steps: 0, or the number of steps, counted from the first step of the whole run,
      whose spikes and currents are summed into the `spike_stats` collection (when mutable).
  """
  steps: int
  calibration_rounds: int = 0
  statistics_steps: int = 0


def counted_steps_mask(module: nn.Module, steps: int, statistics_steps: int) -> jax.Array:
  """A [steps] 0/1 mask of this chunk's steps that fall within the first `statistics_steps`.

  The module keeps the number of steps it has seen in `spike_stats`, so the mask needs no
  knowledge of where in the run the chunk lies.
  """
  elapsed = module.variable('spike_stats', 'elapsed_steps', jnp.zeros, (), jnp.int32)
  mask = (elapsed.value + jnp.arange(steps)) < statistics_steps
  elapsed.value += steps
  return mask.astype(jnp.float32)


class Activation(nn.Module):
  """QCFS in the ANN; IF neurons with threshold lambda in the SNN."""
  levels: int
  spiking: Spiking | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    threshold = self.param('threshold', nn.initializers.constant(INITIAL_THRESHOLD), ())
    if self.spiking is None:
      return qcfs(x, threshold, self.levels)

    steps = self.spiking.steps
    currents = jnp.broadcast_to(x / threshold, (steps,) + x.shape[1:])
    neuron_shape = x.shape[1:]
    potential = self.variable('membrane', 'potential', jnp.full, neuron_shape,
                              neuron.INITIAL_POTENTIAL, x.dtype)
    if self.spiking.calibration_rounds:
      shift = neuron.calibrated_shift(currents, self.spiking.calibration_rounds)
      self.variable('shifts', 'shift', jnp.zeros, neuron_shape, x.dtype).value = shift
      potential.value = neuron.INITIAL_POTENTIAL + shift
    potential.value, spikes = neuron.run_if(potential.value, currents)

    if self.spiking.statistics_steps and self.is_mutable_collection('spike_stats'):
      mask = counted_steps_mask(self, steps, self.spiking.statistics_steps)
      spike_count = self.variable('spike_stats', 'spike_count', jnp.zeros, neuron_shape, x.dtype)
      input_total = self.variable('spike_stats', 'input_total', jnp.zeros, neuron_shape, x.dtype)
      spike_count.value += jnp.tensordot(mask, spikes, axes=1)
      input_total.value += jnp.tensordot(mask, currents, axes=1)
    return spikes * threshold
