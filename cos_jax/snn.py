"""Conversion of a QCFS network into an IF spiking network, its simulation, COS calibration and
SRP.

A simulation runs in chunks of time steps. Inside a chunk every layer handles all of the chunk's
steps at once (the convolutions see [steps * B] inputs, which keeps the matrix products large),
and each activation layer runs its IF neurons over the chunk with `lax.scan`. Between chunks only
the membrane potentials are carried, so memory grows with the chunk length, never with T.

COS needs, for each layer, the first rho input currents produced by the calibrated layers below
it: that is exactly one chunk of rho steps in which each activation layer calibrates before it
fires (docs/method.md §4). The steps after it continue from the carried potentials, so calibrating
and simulating T steps costs max(T, rho) steps of synaptic work, not rho + T.

SRP (docs/method.md §9) is one chunk of tau plain steps at whose end every activation layer
records its residual mask and resets to 1/2, then a run of T steps with masked outputs: tau + T
steps of synaptic work, memory flat in T like every run.
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


@struct.dataclass
class Masks:
  """SRP's residual masks: per IF layer a [B, *S] bool array, true where the neuron ended the tau
  pre-simulation steps with a potential above `neuron.RESIDUAL_BOUND` (it keeps firing), false
  where it is silenced. `tau` records the pre-simulation length.
  """

  values: dict[str, Any]
  tau: int = struct.field(pytree_node=False)


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


def _apply_chunk(
  snn: SNN, images: jax.Array, state: dict, spiking: Spiking, masks: dict | None = None
):
  """Runs one chunk; `state` holds the collections carried in and out (membrane, stats), `masks`
  SRP's residual masks (read, with `spiking.residual_masked`)."""
  mutable = {*state, 'membrane'}
  mutable |= {'shifts'} if spiking.calibration_rounds else set()
  mutable |= {'residual_masks'} if spiking.srp_presimulation else set()
  inputs = {**snn.variables, **state, **({'residual_masks': masks} if masks is not None else {})}
  with nn.intercept_methods(_nonzero_input_counter(spiking)):
    logits, updated = snn.model.clone(spiking=spiking).apply(
      inputs, images[None], train=False, mutable=sorted(mutable)
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
  masks: dict | None = None,
):
  """Simulates `steps` steps; the first chunk has `first_chunk` steps and calibrates if rounds;
  spikes, currents and non-zero inputs of the first `statistics_steps` steps are summed; with
  SRP's `masks`, every layer's output spikes are masked.

  Chunks of `chunk` steps run in one `lax.scan`, so that XLA reuses one set of buffers for all
  of them; a calibrating or differently sized first chunk and a shorter last chunk run apart.
  """

  def spiking(chunk_steps, calibration_rounds=0):
    return Spiking(
      chunk_steps, calibration_rounds, statistics_steps, residual_masked=masks is not None
    )

  state = _initial_state(snn, images, shift_values, statistics_steps)
  outputs, shifts, remaining = [], None, steps
  if rounds or first_chunk != chunk:
    logits, state = _apply_chunk(snn, images, state, spiking(first_chunk, rounds), masks)
    shifts = state.pop('shifts') if rounds else None
    outputs.append(logits)
    remaining = max(steps - first_chunk, 0)
  full_chunks, last_chunk = divmod(remaining, chunk)
  if full_chunks:
    body = spiking(chunk)
    state, chunk_logits = jax.lax.scan(
      lambda carried, _: _apply_chunk(snn, images, carried, body, masks)[::-1],
      state,
      None,
      length=full_chunks,
    )
    outputs.append(chunk_logits.reshape((-1,) + chunk_logits.shape[2:]))
  if last_chunk:
    logits, state = _apply_chunk(snn, images, state, spiking(last_chunk), masks)
    outputs.append(logits)
  return jnp.concatenate(outputs)[:steps], shifts, state.get('spike_stats')


def _srp_presimulation(snn: SNN, images: jax.Array, *, tau: int, statistics: bool):
  """SRP's tau pre-simulation steps from 1/2, as one chunk: the residual masks, and the non-zero
  inputs of every Conv and Dense layer over the tau steps (with `statistics`, else None)."""
  state = _initial_state(snn, images, None, tau if statistics else 0)
  spiking = Spiking(tau, statistics_steps=tau if statistics else 0, srp_presimulation=True)
  _, state = _apply_chunk(snn, images, state, spiking)
  return state['residual_masks'], state.get('spike_stats')


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


@xla.jit(static_argnames=('tau', 'steps', 'first_chunk', 'chunk', 'statistics_steps'))
def _srp_jit(snn, images, masks, *, tau, steps, first_chunk, chunk, statistics_steps=0):
  """SRP's run: the pre-simulation (unless `masks` are given), then `steps` masked steps cut
  into chunks as `chunking` says."""
  presimulation_stats = None
  if masks is None:
    masks, presimulation_stats = _srp_presimulation(
      snn, images, tau=tau, statistics=bool(statistics_steps)
    )
  if not steps:
    return None, masks, None
  logits, _, spike_stats = _run(
    snn,
    images,
    steps=steps,
    first_chunk=first_chunk,
    rounds=0,
    chunk=chunk,
    shift_values=None,
    statistics_steps=statistics_steps,
    masks=masks,
  )
  summary = _summarise(spike_stats, statistics_steps) if statistics_steps else None
  if presimulation_stats is not None:
    for layer, values in _summarise(presimulation_stats, tau).items():
      if 'nonzero_inputs' in values:
        summary[layer]['presimulation_nonzero_inputs'] = values['nonzero_inputs']
  return logits, masks, summary


def _check_batch(values: dict, images, what: str, found_by: str) -> None:
  """Per-sample values (shifts, masks) must come from a batch of as many images as `images`."""
  leaves = jax.tree.leaves(values)
  if leaves and np.ndim(leaves[0]) and np.shape(leaves[0])[0] != images.shape[0]:
    raise ValueError(
      f'{what} were found on a batch of {np.shape(leaves[0])[0]} images, but '
      f'{images.shape[0]} images were given: {what} are per sample, run {found_by} on the '
      'same images you simulate.'
    )


def _check_shifts(snn: SNN, images, shifts: Shifts) -> None:
  if not isinstance(shifts, Shifts):
    raise TypeError(
      f'shifts must be the Shifts returned by calibrate, got {type(shifts).__name__}.'
    )
  argument_checks.check_positive_int('shifts.rho', shifts.rho)
  argument_checks.check_positive_int('shifts.rounds', shifts.rounds)
  _check_batch(shifts.values, images, 'shifts', 'calibrate')
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


def _check_masks(snn: SNN, images, masks: Masks) -> None:
  if not isinstance(masks, Masks):
    raise TypeError(f'masks must be the Masks returned by srp_masks, got {type(masks).__name__}.')
  argument_checks.check_positive_int('masks.tau', masks.tau)
  _check_batch(masks.values, images, 'masks', 'srp_masks')
  expected = jax.eval_shape(
    lambda x: _srp_presimulation(snn, x, tau=1, statistics=False)[0], images
  )
  argument_checks.check_same_tree(masks.values or {}, expected, 'masks')
  not_bool = [
    f'{"/".join(path)} ({np.asarray(value).dtype})'
    for path, value in traverse_util.flatten_dict(dict(masks.values)).items()
    if np.asarray(value).dtype != np.bool_
  ]
  if not_bool:
    raise ValueError(
      f'masks.values must be bool arrays (True: the neuron keeps firing), but '
      f'{argument_checks.listed(not_bool)} are not.'
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


def chunking(T: int, rho: int, chunk: int | None, tau: int = 0) -> dict[str, int]:
  """How a run of T steps is cut into chunks: `first_chunk` (rho with COS) and `chunk` (the
  rest's; by default rho with COS, tau with SRP, else DEFAULT_CHUNK), as `_run` takes them."""
  chunk = chunk or rho or tau or DEFAULT_CHUNK
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
  masks: Masks | None = None,
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
    masks: SRP's residual masks from `srp_masks` on the same images: the T steps after SRP's
      pre-simulation (every neuron starts at theta / 2, silenced neurons send no spike). Not
      with `shifts`.
    chunk: time steps per chunk; memory grows with it, not with T. By default rho with
      shifts and tau with masks (so the run never holds more steps than the pre-simulation
      did), else DEFAULT_CHUNK.
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
  T, chunk = argument_checks.static_int(T), argument_checks.static_int(chunk)
  images = _validated(snn, images, T=T, rounds=1, chunk=chunk, precision=precision)
  if shifts is not None and masks is not None:
    raise ValueError(
      'simulate takes shifts (COS) or masks (SRP), not both: the two methods are not combined.'
    )
  if masks is not None:
    _check_masks(snn, images, masks)
    with precision_lib.matmul_precision(precision):
      return _srp_jit(
        snn, images, masks.values, tau=masks.tau, steps=T, **chunking(T, 0, chunk, tau=masks.tau)
      )[0]
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
  rho, rounds = argument_checks.static_int(rho), argument_checks.static_int(rounds)
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
  T, rho, rounds, chunk, statistics_T = map(
    argument_checks.static_int, (T, rho, rounds, chunk, statistics_T)
  )
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


def srp_masks(
  snn: SNN, images, tau: int = 4, *, precision: str = precision_lib.SNN_PRECISION
) -> Masks:
  """SRP's pre-simulation: tau plain steps from theta / 2, then each neuron's residual mask.

  The rule is docs/method.md §9 (Hao et al., AAAI 2023). `simulate(snn, images, T,
  masks=masks)` then runs the T steps after it; `srp_simulate` does both in one program.

  Args:
    snn: the network from `convert`.
    images: [B, H, W, C] normalised images; the masks are per sample, for these images.
    tau: the pre-simulation length (>= 1), one chunk: memory grows with tau, not with T.
    precision: as `simulate`'s.

  Returns:
    The masks: per IF layer a [B, *S] bool array, true where the neuron keeps firing.
  """
  tau = argument_checks.static_int(tau)
  argument_checks.check_positive_int('tau', tau)
  images = _validated(snn, images, T=tau, rounds=1, chunk=None, precision=precision)
  with precision_lib.matmul_precision(precision):
    masks = _srp_jit(snn, images, None, tau=tau, steps=0, **chunking(0, 0, None, tau=tau))[1]
  return Masks(values=masks, tau=tau)


def srp_simulate(
  snn: SNN,
  images,
  T: int,
  tau: int = 4,
  *,
  chunk: int | None = None,
  statistics_T: int = 0,
  precision: str = precision_lib.SNN_PRECISION,
):
  """SRP (docs/method.md §9): the tau pre-simulation steps and the T steps after them, fused.

  Gives the logits of `srp_masks` followed by `simulate(..., masks=masks)`, bit for bit. The
  latency of step t is tau + t, and the run costs tau + T steps of synaptic work.

  Args:
    snn: the network from `convert`.
    images: [B, H, W, C] normalised images.
    T: the number of steps after the pre-simulation (>= 1).
    tau: the pre-simulation length (>= 1).
    chunk, precision: as `simulate`'s (the chunk defaults to tau).
    statistics_T: 0, or 1..T: statistics over the first statistics_T steps after the
      pre-simulation, as `calibrate_and_simulate` gives them, and per Conv and Dense layer the
      non-zero inputs of the tau pre-simulation steps (`presimulation_nonzero_inputs`).

  Returns:
    `(logits, masks, statistics)`: [T, B, num_classes] logits of the T steps after the
    pre-simulation (not summed), the `Masks`, and the statistics (None without statistics_T).
  """
  T, tau, chunk, statistics_T = map(argument_checks.static_int, (T, tau, chunk, statistics_T))
  argument_checks.check_positive_int('tau', tau)
  images = _validated(snn, images, T=T, rounds=1, chunk=chunk, precision=precision)
  argument_checks.check_positive_int('statistics_T', statistics_T, minimum=0)
  if statistics_T > T:
    raise ValueError(f'statistics_T must be 0 (off) or between 1 and T={T}, got {statistics_T}.')
  with precision_lib.matmul_precision(precision):
    logits, masks, summary = _srp_jit(
      snn,
      images,
      None,
      tau=tau,
      steps=T,
      statistics_steps=statistics_T,
      **chunking(T, 0, chunk, tau=tau),
    )
  return logits, Masks(values=masks, tau=tau), summary


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
