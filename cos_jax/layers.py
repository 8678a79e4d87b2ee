"""The layers shared by the ANN and the SNN: the activation, a convolution fast on tiny maps, and a
BatchNorm whose training-mode statistics are fast on the CPU.

In the ANN (`spiking=None`) it is QCFS. After conversion the same layer, with the same threshold
parameter, is a layer of IF neurons driven over a chunk of time steps: its input then has an
explicit leading time axis, of length `spiking.steps`, or of length 1 for a current that is the same
at every step (the first layer's, computed once from the analog image).

The membrane potentials live in the `membrane` variable collection, the COS shifts in `shifts`,
SRP's masks in `residual_masks` and the per-neuron counters behind the offset-spike statistics in
`spike_stats`: the caller
threads them through `apply(..., mutable=...)`, so a whole simulation is a pure function.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cos_jax import neuron, xla
from cos_jax.qcfs import qcfs

INITIAL_THRESHOLD = 8.0
"""The QCFS threshold lambda at initialisation (docs/method.md §1)."""


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
    srp_presimulation: this chunk is SRP's pre-simulation: after its steps every layer writes
      its residual mask (`neuron.residual_mask`) to the `residual_masks` collection and its
      potentials are reset to 1/2.
    residual_masked: the layers' output spikes are multiplied by the masks in the
      `residual_masks` collection (SRP after its pre-simulation).
  """

  steps: int
  calibration_rounds: int = 0
  statistics_steps: int = 0
  srp_presimulation: bool = False
  residual_masked: bool = False


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
    potential = self.variable(
      'membrane', 'potential', jnp.full, neuron_shape, neuron.INITIAL_POTENTIAL, x.dtype
    )
    if self.spiking.calibration_rounds:
      shift = neuron.calibrated_shift(currents, self.spiking.calibration_rounds)
      self.variable('shifts', 'shift', jnp.zeros, neuron_shape, x.dtype).value = shift
      potential.value = neuron.INITIAL_POTENTIAL + shift
    potential.value, spikes = neuron.run_if(potential.value, currents)
    if self.spiking.srp_presimulation:
      mask = self.variable('residual_masks', 'mask', jnp.zeros, neuron_shape, jnp.bool_)
      mask.value = neuron.residual_mask(potential.value)
      potential.value = jnp.full_like(potential.value, neuron.INITIAL_POTENTIAL)
    if self.spiking.residual_masked:
      spikes = spikes * self.get_variable('residual_masks', 'mask').astype(spikes.dtype)

    if self.spiking.statistics_steps and self.is_mutable_collection('spike_stats'):
      mask = counted_steps_mask(self, steps, self.spiking.statistics_steps)
      spike_count = self.variable('spike_stats', 'spike_count', jnp.zeros, neuron_shape, x.dtype)
      input_total = self.variable('spike_stats', 'input_total', jnp.zeros, neuron_shape, x.dtype)
      spike_count.value += jnp.tensordot(mask, spikes, axes=1)
      input_total.value += jnp.tensordot(mask, currents, axes=1)
    return spikes * threshold


def is_activation_call(context: nn.module.InterceptorContext) -> bool:
  """Whether a method interceptor's `context` is the call of an `Activation` layer."""
  return isinstance(context.module, Activation) and context.method_name == '__call__'


def _unrolled_kernel_indices(height: int, width: int, kernel_size, padding):
  """For every (input position, output position) pair, the kernel tap joining them, or -1."""
  kh, kw = kernel_size
  (top, bottom), (left, right) = padding
  out_h, out_w = height + top + bottom - kh + 1, width + left + right - kw + 1
  iy, ix = np.meshgrid(np.arange(height), np.arange(width), indexing='ij')
  oy, ox = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing='ij')
  ty = iy.reshape(-1, 1) - oy.reshape(1, -1) + top
  tx = ix.reshape(-1, 1) - ox.reshape(1, -1) + left
  valid = (ty >= 0) & (ty < kh) & (tx >= 0) & (tx < kw)
  return np.where(valid, ty * kw + tx, -1), (out_h, out_w)


class Conv(nn.Conv):
  """`nn.Conv`, computed as one matrix product when the feature map is tiny.

  XLA on CPU runs a 3x3 convolution over a 2x2 map (VGG-16's last stage on CIFAR) tens of times
  slower per FLOP than over larger maps. When a map has no more positions than the kernel has
  taps, the convolution is exactly a dense layer from the flattened input map to the flattened
  output map, with a weight matrix unrolled from the kernel, and that costs no more
  multiply-accumulates than the convolution nominally does. Parameters and results are those of
  `nn.Conv` (same names and shapes); other cases run `nn.Conv` itself.
  """

  def _tiny_map_padding(self, inputs):
    """The explicit ((top, bottom), (left, right)) padding if the dense form applies, else None."""
    if len(self.kernel_size) != 2 or self.feature_group_count != 1 or inputs.ndim < 4:
      return None
    for option in (self.strides, self.input_dilation, self.kernel_dilation):
      if option not in (None, 1, (1, 1)):
        return None
    height, width = inputs.shape[-3:-1]
    if height * width > int(np.prod(self.kernel_size)):
      return None
    if isinstance(self.padding, int):
      return ((self.padding, self.padding),) * 2
    if self.padding == 'SAME' and all(k % 2 for k in self.kernel_size):
      return tuple((k // 2, k // 2) for k in self.kernel_size)
    return None

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    padding = self._tiny_map_padding(inputs)
    if padding is None:
      return super().__call__(inputs)
    in_features = inputs.shape[-1]
    kernel = self.param(
      'kernel',
      self.kernel_init,
      tuple(self.kernel_size) + (in_features, self.features),
      self.param_dtype,
    )
    height, width = inputs.shape[-3:-1]
    taps, (out_h, out_w) = _unrolled_kernel_indices(height, width, self.kernel_size, padding)
    flat_kernel = kernel.reshape((-1, in_features, self.features))
    flat_kernel = jnp.concatenate([flat_kernel, jnp.zeros_like(flat_kernel[:1])])  # tap -1: zero
    unrolled = flat_kernel[taps]  # [in positions, out positions, in_features, features]
    unrolled = unrolled.transpose(0, 2, 1, 3).reshape(
      height * width * in_features, out_h * out_w * self.features
    )
    batch_shape = inputs.shape[:-3]
    flat = inputs.reshape((-1, height * width * in_features))
    y = jnp.dot(flat, unrolled.astype(inputs.dtype), precision=self.precision)
    y = y.reshape(batch_shape + (out_h, out_w, self.features))
    if self.use_bias:
      y = y + self.param('bias', self.bias_init, (self.features,), self.param_dtype)
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
  """BatchNorm over every axis but the last, with the batch's own statistics.

  Args:
    x: [..., C] inputs (float32 or wider).
    scale, bias: [C] affine parameters.
    epsilon: added to the variance.

  Returns:
    `(y, mean, var)`: the normalised `x`, and the batch mean and (biased) variance of each
    channel, computed as `nn.BatchNorm` does (mean of x and of x^2, var = E[x^2] - E[x]^2 >= 0).
  """
  return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_forward(x, scale, bias, epsilon):
  count = x.size // x.shape[-1]
  mean = xla.channel_sum(x) / count
  mean_of_squares = xla.channel_sum(x * x) / count
  var = jnp.maximum(0.0, mean_of_squares - mean * mean)
  inverse_std = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (inverse_std * scale) + bias
  return (y, mean, var), (x, mean, inverse_std, scale)


def _batch_norm_backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inverse_std, scale = residuals
  grad_y, grad_mean, grad_var = cotangents
  count = x.size // x.shape[-1]
  centred = x - mean
  normalised = centred * inverse_std
  grad_bias = xla.channel_sum(grad_y)
  grad_scale = xla.channel_sum(grad_y * normalised)
  grad_x = (scale * inverse_std) * (grad_y - (grad_bias + normalised * grad_scale) / count)
  grad_x = grad_x + (grad_mean + 2.0 * grad_var * centred) / count
  return grad_x, grad_scale.astype(scale.dtype), grad_bias.astype(scale.dtype)


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_backward)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` (same variables, same results), faster to train on the CPU.

  With running statistics, and for any option beyond the channels-last defaults the models use,
  this is `nn.BatchNorm` itself. In training mode the statistics and the backward pass come from
  `batch_norm_train`, whose reductions are matrix-vector products and whose gradient is the
  closed form (one pass for the two parameter gradients, one for the input's). The values equal
  `nn.BatchNorm`'s up to the order of the float sums (`tests/test_layers.py`).
  """

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask=None):
    running = nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    defaults = (
      self.axis == -1
      and self.axis_name is None
      and mask is None
      and self.use_bias
      and self.use_scale
      and self.dtype is None
      and self.use_fast_variance
      and self.force_float32_reductions
    )
    if running or self.is_initializing() or not defaults:
      return super().__call__(x, use_running_average, mask=mask)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)
    compute = jnp.promote_types(jnp.float32, jnp.result_type(x, scale, bias))
    y, mean, var = batch_norm_train(
      x.astype(compute), scale.astype(compute), bias.astype(compute), self.epsilon
    )
    ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
    ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(jnp.result_type(x, scale, bias))
