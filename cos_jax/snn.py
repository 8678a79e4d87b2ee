"""Conversion of a QCFS network into an IF spiking network, its simulation, and COS calibration.

A simulation runs in chunks of time steps. Inside a chunk every layer handles all of the chunk's
steps at once (the convolutions see [steps * B] inputs, which keeps the matrix products large),
and each activation layer runs its IF neurons over the chunk with `lax.scan`. Between chunks only
the membrane potentials are carried, so memory grows with the chunk length, never with T.

COS needs, for each layer, the first rho input currents produced by the calibrated layers below
it: that is exactly one chunk of rho steps in which each activation layer calibrates before it
fires (docs/method.md §4). The steps after it continue from the carried potentials, so calibrating
and simulating T steps costs max(T, rho) steps of synaptic work, not rho + T.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct, traverse_util

from cos_jax import argument_checks, convertibility, models, neuron, xla
from cos_jax import precision as precision_lib
from cos_jax.layers import Spiking, counted_steps_mask

DEFAULT_CHUNK = 8
"""Time steps per chunk without calibration (with it, rho): memory is proportional to it."""

OFFSET_SPIKE_BINS = (-3, -2, -1, 0, 1, 2, 3)
"""Offset-spike histogram bins; the outer two hold psi <= -3 and psi >= 3."""


@struct.dataclass
class SNN:
  """A converted network: the QCFS model (static) and its `params` and `batch_stats` (if any)."""

  model: nn.Module = struct.field(pytree_node=False)
  variables: dict[str, Any]


@struct.dataclass
class Shifts:
  """Calibrated initial-potential shifts, in threshold units, one [B, *S] array per IF layer.

  `rho` and `rounds` record how they were found; a simulation from them starts with a chunk of
  rho steps, the same shape as the calibration's, so it reproduces the fused run bit for bit.
  """

  values: dict[str, Any]
  rho: int = struct.field(pytree_node=False)
  rounds: int = struct.field(pytree_node=False)


def convert(model: nn.Module, variables: dict[str, Any]) -> SNN:
  """Turns a trained QCFS model and its variables into an SNN of IF neurons.

  Args:
    model: a cos_jax QCFS model (`create_model`, `load_torch_checkpoint`), or your own Flax
      module that keeps the contract in `cos_jax.convertibility`.
    variables: its `params` and `batch_stats`.

  Returns:
    The SNN: every QCFS layer becomes IF neurons with threshold theta = lambda, starting at
    theta / 2 and reset by subtraction; BatchNorm uses its running statistics.

  Raises:
    convertibility.NotConvertibleError: the model applies something other than a linear
      operation to the spikes between its activations (`cos_jax.convertibility`).
  """
  if not hasattr(model, 'spiking') or not hasattr(model, 'input_shape'):
    raise TypeError(
      f'convert needs a QCFS model with the fields spiking and input_shape (a '
      'cos_jax model, or your own as cos_jax.convertibility describes), got '
      f'{type(model).__name__}.'
    )
  if model.spiking is not None:
    raise ValueError('convert needs the ANN model (spiking=None); this one is already converted.')
  try:
    hash(model)  # the simulation compiles per model: it is a static argument
  except TypeError as error:
    unhashable = [
      f.name
      for f in dataclasses.fields(model)
      if isinstance(getattr(model, f.name, None), (list, dict, set))
    ]
    raise ValueError(
      f'{type(model).__name__} cannot be converted: its fields must be hashable '
      f'(tuples, not lists or dicts), but {unhashable or "a field"} is not.'
    ) from error
  expected = models.abstract_variables(model)  # 'params', and 'batch_stats' with BatchNorm
  for collection in expected:
    if collection not in variables:
      raise ValueError(
        f'variables lack the {collection!r} collection; pass the full variables '
        'returned by model.init or the training state.'
      )
    argument_checks.check_same_tree(variables[collection], expected[collection], collection)
  argument_checks.check_variables_usable(variables)
  convertibility.check_convertible(model)
  return SNN(model=model, variables={collection: variables[collection] for collection in expected})


def _linear_layer_interceptor(on_call):
  """A method interceptor calling `on_call(module, inputs, outputs)` once per Conv/Dense call.

  Only the outermost call counts: cos_jax's `Conv` falls back on `nn.Conv.__call__`, which
  would otherwise be seen twice.
  """
  active = set()

  def intercept(next_fun, args, kwargs, context):
    module = context.module
    if (
      context.method_name != '__call__'
      or not isinstance(module, (nn.Conv, nn.Dense))
      or id(module) in active
    ):
      return next_fun(*args, **kwargs)
    active.add(id(module))
    try:
      outputs = next_fun(*args, **kwargs)
    finally:
      active.discard(id(module))
    on_call(module, args[0], outputs)
    return outputs

  return intercept


def _nonzero_input_counter(spiking: Spiking):
  """Sums, per Conv and Dense layer, the non-zero inputs of the counted steps.

  These are the synaptic events: each non-zero input (a spike times theta, or a pooled one)
  drives the layer's synapses once. An input with a time axis of 1 is the same at every step.
  """

  def count(module, x, _):
    if not spiking.statistics_steps or not module.is_mutable_collection('spike_stats'):
      return
    mask = counted_steps_mask(module, spiking.steps, spiking.statistics_steps)
    nonzero_per_step = (x != 0).reshape(x.shape[0], -1).sum(1, dtype=jnp.float32)
    total = module.variable('spike_stats', 'nonzero_inputs', jnp.zeros, (), jnp.float32)
    total.value += jnp.sum(mask * nonzero_per_step)  # broadcasts a time axis of 1

  return _linear_layer_interceptor(count)


def _apply_chunk(snn: SNN, images: jax.Array, state: dict, spiking: Spiking):
  """Runs one chunk; `state` holds the collections carried in and out (membrane, stats)."""
  mutable = {*state, 'membrane'} | ({'shifts'} if spiking.calibration_rounds else set())
  with nn.intercept_methods(_nonzero_input_counter(spiking)):
    logits, updated = snn.model.clone(spiking=spiking).apply(
      {**snn.variables, **state}, images[None], train=False, mutable=sorted(mutable)
    )
  return logits, dict(updated)


def _potentials_from_shifts(shifts: dict) -> dict:
  flat = traverse_util.flatten_dict(shifts)
  return traverse_util.unflatten_dict(
    {path[:-1] + ('potential',): neuron.INITIAL_POTENTIAL + shift for path, shift in flat.items()}
  )


def _initial_state(
  snn: SNN, images: jax.Array, shift_values: dict | None, statistics_steps: int
) -> dict:
  """Membrane potentials at 1/2 (plus the shifts, if given) and zeroed statistics counters."""
  spiking = Spiking(1, statistics_steps=statistics_steps)
  shapes = jax.eval_shape(
    lambda x: _apply_chunk(snn, x, {'spike_stats': {}} if statistics_steps else {}, spiking)[1],
    images,
  )
  state = {
    'membrane': jax.tree.map(
      lambda s: jnp.full(s.shape, neuron.INITIAL_POTENTIAL, s.dtype), shapes['membrane']
    )
  }
  if shift_values is not None:
    state['membrane'] = _potentials_from_shifts(shift_values)
  if statistics_steps:
    state['spike_stats'] = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), shapes['spike_stats']
    )
  return state


def _run(
  snn: SNN,
  images: jax.Array,
  *,
  steps: int,
  first_chunk: int,
  rounds: int,
  chunk: int,
  shift_values: dict | None,
  statistics_steps: int,
):
  """Simulates `steps` steps; the first chunk has `first_chunk` steps and calibrates if rounds;
  spikes, currents and non-zero inputs of the first `statistics_steps` steps are summed.

  Chunks of `chunk` steps run in one `lax.scan`, so that XLA reuses one set of buffers for all
  of them; a calibrating or differently sized first chunk and a shorter last chunk run apart.
  """
  state = _initial_state(snn, images, shift_values, statistics_steps)
  outputs, shifts, remaining = [], None, steps
  if rounds or first_chunk != chunk:
    logits, state = _apply_chunk(snn, images, state, Spiking(first_chunk, rounds, statistics_steps))
    shifts = state.pop('shifts') if rounds else None
    outputs.append(logits)
    remaining = max(steps - first_chunk, 0)
  full_chunks, last_chunk = divmod(remaining, chunk)
  if full_chunks:
    body = Spiking(chunk, statistics_steps=statistics_steps)
    state, chunk_logits = jax.lax.scan(
      lambda carried, _: _apply_chunk(snn, images, carried, body)[::-1],
      state,
      None,
      length=full_chunks,
    )
    outputs.append(chunk_logits.reshape((-1,) + chunk_logits.shape[2:]))
  if last_chunk:
    logits, state = _apply_chunk(
      snn, images, state, Spiking(last_chunk, statistics_steps=statistics_steps)
    )
    outputs.append(logits)
  return jnp.concatenate(outputs)[:steps], shifts, state.get('spike_stats')


def _layer_name(path: tuple[str, ...]) -> str:
  return '/'.join(path[:-1])


def _summarise(spike_stats: dict, steps: int) -> dict[str, dict[str, jax.Array]]:
  """Per IF layer, the offset-spike histogram over OFFSET_SPIKE_BINS and the total spikes; per
  Conv and Dense layer, the total non-zero inputs."""
  flat = traverse_util.flatten_dict(spike_stats)
  summary = {}
  for path, spike_count in flat.items():
    if path[-1] == 'nonzero_inputs':
      summary[_layer_name(path)] = {'nonzero_inputs': spike_count}
    if path[-1] != 'spike_count':
      continue
    input_total = flat[path[:-1] + ('input_total',)]
    psi = spike_count - neuron.desired_count(input_total, steps)
    psi = jnp.clip(psi, OFFSET_SPIKE_BINS[0], OFFSET_SPIKE_BINS[-1]).astype(jnp.int32)
    histogram = jnp.stack([(psi == b).sum() for b in OFFSET_SPIKE_BINS])
    summary[_layer_name(path)] = {'psi_histogram': histogram, 'spikes': spike_count.sum()}
  return summary


@xla.jit(static_argnames=('steps', 'first_chunk', 'rounds', 'chunk', 'statistics_steps'))
def _simulate_jit(
  snn, images, shift_values, *, steps, first_chunk, rounds, chunk, statistics_steps=0
):
  logits, shifts, spike_stats = _run(
    snn,
    images,
    steps=steps,
    first_chunk=first_chunk,
    rounds=rounds,
    chunk=chunk,
    shift_values=shift_values,
    statistics_steps=statistics_steps,
  )
  summary = _summarise(spike_stats, statistics_steps) if statistics_steps else None
  return logits, shifts, summary


def _check_shifts(snn: SNN, images, shifts: Shifts) -> None:
  if not isinstance(shifts, Shifts):
    raise TypeError(
      f'shifts must be the Shifts returned by calibrate, got {type(shifts).__name__}.'
    )
  argument_checks.check_positive_int('shifts.rho', shifts.rho)
  argument_checks.check_positive_int('shifts.rounds', shifts.rounds)
  leaves = jax.tree.leaves(shifts.values)
  if leaves and np.ndim(leaves[0]) and np.shape(leaves[0])[0] != images.shape[0]:
    raise ValueError(
      f'shifts were calibrated on a batch of {np.shape(leaves[0])[0]} images, but '
      f'{images.shape[0]} images were given: COS shifts are per sample, calibrate '
      'on the same images you simulate.'
    )
  expected = jax.eval_shape(
    lambda x: _run(
      snn, x, steps=1, first_chunk=1, rounds=1, chunk=1, shift_values=None, statistics_steps=0
    )[1],
    images,
  )
  argument_checks.check_same_tree(shifts.values or {}, expected, 'shifts')
  for path, value in traverse_util.flatten_dict(dict(shifts.values)).items():
    if not bool(jnp.isfinite(value).all()):
      raise ValueError(
        f'shifts.values/{"/".join(path)} holds NaN or infinite values: '
        'recalibrate, or fix the values edited by hand.'
      )


def _validated(snn: SNN, images, *, T: int, rounds: int, chunk: int | None, precision: str):
  """Checks what every simulation takes and returns the images as a JAX array."""
  precision_lib.check_precision(precision)
  if not isinstance(snn, SNN):
    raise TypeError(f'expected the SNN returned by cos_jax.convert, got {type(snn).__name__}.')
  argument_checks.check_images(images, snn.model.input_shape)
  argument_checks.check_positive_int('T', T)
  argument_checks.check_positive_int('rounds', rounds)
  if chunk is not None:
    argument_checks.check_positive_int('chunk', chunk)
  return jnp.asarray(images)  # keeps its float dtype: float64 runs stay float64


def chunking(T: int, rho: int, chunk: int | None) -> dict[str, int]:
  """How a run of T steps is cut into chunks: `first_chunk` (rho with COS) and `chunk` (the
  rest's; by default rho with COS, else DEFAULT_CHUNK), as `_run` takes them."""
  chunk = chunk or rho or DEFAULT_CHUNK
  return {'first_chunk': rho or min(T, chunk), 'chunk': chunk}


def _simulation(
  snn: SNN,
  images: jax.Array,
  *,
  T: int,
  rho: int,
  rounds: int,
  chunk: int | None,
  precision: str,
  shift_values: dict | None = None,
  statistics_T: int = 0,
):
  """The compiled run behind `simulate`, `calibrate` and `calibrate_and_simulate`, with its
  convolutions and matrix products at `precision` (one compiled program per precision).

  With rho, the first chunk is the rho steps of calibration (`rounds` > 0) or of the run from
  calibrated `shift_values` (`rounds` = 0), and later chunks default to rho steps too; without
  it every chunk has DEFAULT_CHUNK steps (or `chunk`).
  """
  with precision_lib.matmul_precision(precision):
    return _simulate_jit(
      snn,
      images,
      shift_values,
      steps=T,
      rounds=rounds,
      statistics_steps=statistics_T,
      **chunking(T, rho, chunk),
    )


def simulate(
  snn: SNN,
  images,
  T: int,
  shifts: Shifts | None = None,
  *,
  chunk: int | None = None,
  precision: str = precision_lib.SNN_PRECISION,
) -> jax.Array:
  """Simulates the SNN for T steps on analog images presented at every step.

  Args:
    snn: the network from `convert`.
    images: [B, H, W, C] normalised images.
    T: the number of time steps (>= 1).
    shifts: initial-potential shifts from `calibrate` on the same images, or None for the plain
      QCFS conversion (every neuron starts at theta / 2).
    chunk: time steps per chunk; memory grows with it, not with T. By default rho with
      shifts (so the run never holds more steps than calibration did), else DEFAULT_CHUNK.
      A chunk's layers hold all of its steps' activations at once: a chunk of hundreds of
      steps needs hundreds of times the activation memory of one ANN forward; its compile
      time stays that of `neuron.MAX_UNROLL` steps.
    precision: the precision of every convolution and matrix product (`cos_jax.PRECISIONS`):
      'highest', the default, is full precision of the variables' dtype on every backend;
      'default' is the backend's fastest (one bfloat16 pass on TPUs, TF32 on recent GPUs),
      which changes spikes (docs/results/precision/).

  Returns:
    [T, B, num_classes] logits y(t) of each step (not summed): the prediction after t steps is
    the argmax of `logits[:t].sum(0)`.
  """
  images = _validated(snn, images, T=T, rounds=1, chunk=chunk, precision=precision)
  if shifts is not None:
    _check_shifts(snn, images, shifts)
  return _simulation(
    snn,
    images,
    T=T,
    rho=shifts.rho if shifts is not None else 0,
    rounds=0,
    chunk=chunk,
    precision=precision,
    shift_values=shifts.values if shifts is not None else None,
  )[0]


def calibrate(
  snn: SNN,
  images,
  rho: int = 4,
  *,
  rounds: int = 1,
  precision: str = precision_lib.SNN_PRECISION,
) -> Shifts:
  """COS: calibrates every IF neuron's initial potential on the first rho steps.

  The rule is docs/method.md §4 (the COS paper's section 4).

  Args:
    snn: the network from `convert`.
    images: [B, H, W, C] normalised images; the shifts are per sample, for these images.
    rho: the pre-simulation length (>= 1). The rho steps are one chunk: memory grows with rho
      (see `simulate`'s `chunk`), compile time stays that of `neuron.MAX_UNROLL` steps.
    rounds: rounds of the COS rule (1 is the published method).
    precision: the precision of every convolution and matrix product (`cos_jax.PRECISIONS`):
      'highest', the default, is full precision of the variables' dtype on every backend;
      'default' is the backend's fastest (one bfloat16 pass on TPUs, TF32 on recent GPUs),
      which changes spikes (docs/results/precision/).

  Returns:
    The per-sample, per-neuron shifts in threshold units (add 1/2 for the initial potential).
  """
  argument_checks.check_positive_int('rho', rho)
  images = _validated(snn, images, T=rho, rounds=rounds, chunk=None, precision=precision)
  shifts = _simulation(snn, images, T=rho, rho=rho, rounds=rounds, chunk=None, precision=precision)[
    1
  ]
  return Shifts(values=shifts, rho=rho, rounds=rounds)


def calibrate_and_simulate(
  snn: SNN,
  images,
  T: int,
  *,
  rho: int,
  rounds: int = 1,
  chunk: int | None = None,
  statistics_T: int = 0,
  precision: str = precision_lib.SNN_PRECISION,
):
  """The fused run: calibrate on rho steps and simulate T steps, reusing the rho steps.

  `rho=0` runs the plain QCFS conversion. Gives the same logits as `calibrate` followed by
  `simulate` at max(T, rho) steps of synaptic work instead of rho + T. `rounds`, `chunk` and
  `precision` are those of `calibrate` and `simulate`.

  Returns:
    `(logits, shifts, statistics)`: logits as `simulate`; shifts (None when rho = 0); and, when
    `statistics_T` (1..T) is given, over the first statistics_T steps: per IF layer the
    offset-spike histogram over OFFSET_SPIKE_BINS (`psi_histogram`, summed over the batch and
    the neurons) and the number of spikes (`spikes`), and per Conv and Dense layer the number of
    non-zero inputs (`nonzero_inputs`, the synaptic events); else None.
  """
  argument_checks.check_positive_int('rho', rho, minimum=0)
  images = _validated(snn, images, T=T, rounds=rounds, chunk=chunk, precision=precision)
  argument_checks.check_positive_int('statistics_T', statistics_T, minimum=0)
  if statistics_T > T:
    raise ValueError(f'statistics_T must be 0 (off) or between 1 and T={T}, got {statistics_T}.')
  logits, shifts, summary = _simulation(
    snn,
    images,
    T=T,
    rho=rho,
    rounds=rounds if rho else 0,
    chunk=chunk,
    precision=precision,
    statistics_T=statistics_T,
  )
  return logits, (Shifts(values=shifts, rho=rho, rounds=rounds) if rho else None), summary


def neuron_counts(snn: SNN) -> dict[str, int]:
  """The number of IF neurons per layer of one sample, keyed like the statistics."""
  images = jax.ShapeDtypeStruct((1,) + tuple(snn.model.input_shape), jnp.float32)
  shapes = jax.eval_shape(
    lambda x: _run(
      snn, x, steps=1, first_chunk=1, rounds=0, chunk=1, shift_values=None, statistics_steps=1
    )[2],
    images,
  )
  return {
    _layer_name(path): int(np.prod(leaf.shape))
    for path, leaf in traverse_util.flatten_dict(shapes).items()
    if path[-1] == 'spike_count'
  }


def linear_layer_costs(model: nn.Module) -> dict[str, dict[str, int]]:
  """Per Conv and Dense layer of the ANN, in call order: multiply-accumulates and input size
  of one image (`macs`, `inputs`), keyed like the statistics."""
  costs = {}

  def record(module, inputs, outputs):
    fan_in = inputs.shape[-1]
    if isinstance(module, nn.Conv):
      fan_in *= int(np.prod(module.kernel_size))
    costs['/'.join(module.path)] = {
      'macs': int(np.prod(outputs.shape[1:])) * fan_in,
      'inputs': int(np.prod(inputs.shape[1:])),
    }

  with nn.intercept_methods(_linear_layer_interceptor(record)):
    models.abstract_variables(model)
  return costs
