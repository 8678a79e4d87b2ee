"""Which Flax networks can become spiking networks, and the check `convert` runs on every model.

The contract. A model converts when every nonlinearity it applies to the network's activity is a
`cos_jax.Activation`. Between two activations (and from the last one to the logits) the spikes
may only pass through operations that are linear in them, up to a constant bias:

- convolutions (grouped and depthwise too), dense layers, BatchNorm with running statistics;
- average or sum pooling, means over positions;
- flatten, reshape, transpose, slicing, padding, concatenation;
- residual additions and subtractions, scaling by constants or parameters.

Each IF layer then receives, at every step, exactly the linear image of the spikes below it, and
the spike counts approximate the QCFS activations (docs/method.md §§1-3). A max, a ReLU or any other
pointwise nonlinearity, max pooling, a product or quotient of two activity-dependent values (as in
attention, LayerNorm or gating) or control flow that depends on the activity does not commute with
summing spikes over time, so the SNN would compute something other than the ANN. What acts on the
analog image before the first activation is free: it is computed once and fed as a constant
current.

The module needs:
- fields `num_classes`, `levels` (L, passed to its activations), `input_shape` (H, W, C) and
  `spiking: cos_jax.Spiking | None = None`, passed on as `Activation(levels, self.spiking)`;
- `__call__(self, x, *, train=False)`, with BatchNorm as `use_running_average=not train`.

`convert` clones the model with `spiking` set and applies it to inputs with a leading time axis:
[T, B, H, W, C] (T = 1 for the first layer's constant current). Layers must act on the trailing
axes, as Flax's convolutions, dense layers, BatchNorm and pooling do; flatten with
`x.reshape(x.shape[:-3] + (-1,))`, never `x.reshape(x.shape[0], -1)`.

`check_convertible` traces the spiking model once, without compiling, with every activation's
output replaced by an independent input, and follows which values depend on them through the
traced program (also inside jitted functions, custom derivatives and scans).
"""

import functools
import os
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core

from cos_jax.layers import Spiking, is_activation_call

_TRACE_STEPS, _TRACE_BATCH = 3, 2  # distinct sizes, so that mixing the two axes shows

_LINEAR = frozenset(
  {
    'add',
    'add_any',
    'sub',
    'neg',
    'reshape',
    'broadcast_in_dim',
    'transpose',
    'squeeze',
    'expand_dims',
    'slice',
    'rev',
    'concatenate',
    'pad',
    'reduce_sum',
    'reduce_window_sum',
    'cumsum',
    'copy',
    'copy_p',
    'reduce_precision',
    'split',
    'sharding_constraint',
    'optimization_barrier',
    'real',
    'conj',
  }
)
"""Primitives linear in all their operands together."""

_INDEX_OPERANDS = {
  'dynamic_slice': slice(1, None),
  'dynamic_update_slice': slice(2, None),
  'gather': slice(1, 2),
  'scatter': slice(1, 2),
  'scatter-add': slice(1, 2),
  'scatter_add': slice(1, 2),
  'select_n': slice(0, 1),
}
"""Primitives linear in their other operands while these (indices, predicates) are constant."""

_BILINEAR = frozenset({'mul', 'dot_general', 'conv_general_dilated'})

_CALLS = frozenset(
  {
    'jit',
    'pjit',
    'closed_call',
    'core_call',
    'custom_jvp_call',
    'custom_vjp_call',
    'custom_vjp_call_jaxpr',
    'remat',
    'checkpoint',
    'named_call',
  }
)

_MAX_POOLING = (
  'a max over positions (max pooling)',
  'use average pooling (nn.avg_pool) or a strided convolution',
)
_NONLINEARITY = (
  'a pointwise nonlinearity',
  'use a cos_jax.Activation (QCFS) there, and train the network with it',
)
_PRODUCT = (
  'a product or quotient of two activity-dependent values (as in attention, LayerNorm or gating)',
  'IF neurons can only sum weighted spikes: use constant or learned '
  'scales (BatchNorm with running statistics), not activity-dependent ones',
)
_CONTROL = (
  'control flow or a selection that depends on the activity',
  'make the computation the same for every input; a decision belongs in an Activation',
)
_DESCRIPTIONS = {
  'reduce_window_max': _MAX_POOLING,
  'reduce_window_min': _MAX_POOLING,
  'reduce_max': _MAX_POOLING,
  'reduce_min': _MAX_POOLING,
  'argmax': _MAX_POOLING,
  'argmin': _MAX_POOLING,
  'cond': _CONTROL,
  'while': _CONTROL,
  'select_n': _CONTROL,
  'mul': _PRODUCT,
  'div': _PRODUCT,
  'dot_general': _PRODUCT,
  'conv_general_dilated': _PRODUCT,
}


class NotConvertibleError(ValueError):
  """The model applies something to the spikes that IF neurons cannot compute."""


def _dedupe_path(name_stack: str) -> str:
  """'Net/conv1/conv1' -> 'Net/conv1' (a Flax method's scope repeats its module's name)."""
  parts = [p for p in name_stack.split('/') if p]
  return '/'.join(p for i, p in enumerate(parts) if i == 0 or p != parts[i - 1]) or '(top level)'


def _library_dirs() -> tuple[str, ...]:
  import flax  # pylint: disable=import-outside-toplevel

  return (
    os.path.dirname(jax.__file__) + os.sep,
    os.path.dirname(flax.__file__) + os.sep,
    os.path.abspath(__file__),
  )


def _user_location(eqn, fallback: str) -> str:
  """The innermost source line outside JAX, Flax and this module, as 'file:line'."""
  traceback = eqn.source_info.traceback
  skip = _library_dirs()
  for frame in traceback.frames if traceback is not None else ():
    if not frame.file_name.startswith(skip):
      path = os.path.relpath(frame.file_name)
      return f'{frame.file_name if path.startswith("..") else path}:{frame.line_num}'
  return fallback


class _Context(NamedTuple):
  """Where a sub-program sits: its module scope, the named function it belongs to (e.g. 'relu')
  and the user's source line of the call that holds it."""

  scope: str = ''
  function: str | None = None
  location: str = 'unknown location'

  def inside(self, eqn) -> '_Context':
    return _Context(
      self.scope + str(eqn.source_info.name_stack) + '/',
      self.function or eqn.params.get('name'),
      _user_location(eqn, self.location),
    )


_TOP = _Context()


class _Tracker:
  """Follows which variables of a jaxpr depend on the spikes, collecting what is not linear."""

  def __init__(self):
    self.problems: dict[tuple[str, str, tuple[str, str]], list[str]] = {}

  def refuse(self, eqn, context: _Context, kind=None) -> None:
    name = eqn.primitive.name
    operation = (
      f'{context.function} ({name})' if context.function and context.function != name else name
    )
    path = _dedupe_path(context.scope + str(eqn.source_info.name_stack))
    kind = kind or _DESCRIPTIONS.get(name, _NONLINEARITY)
    key = (path, _user_location(eqn, context.location), kind)
    if operation not in self.problems.setdefault(key, []):
      self.problems[key].append(operation)

  def run(self, jaxpr, tainted: Sequence[bool], context: _Context = _TOP) -> list[bool]:
    """Propagates the taint of `jaxpr`'s inputs to its outputs."""
    taint = {}

    def read(atom) -> bool:
      return not isinstance(atom, jax_core.Literal) and taint.get(atom, False)

    for var, flag in zip(jaxpr.invars, tainted, strict=True):
      taint[var] = flag
    for eqn in jaxpr.eqns:
      flags = [read(v) for v in eqn.invars]
      outputs = self._equation(eqn, flags, context) if any(flags) else None
      for var, flag in zip(eqn.outvars, outputs or [False] * len(eqn.outvars), strict=True):
        taint[var] = flag
    return [read(v) for v in jaxpr.outvars]

  def _equation(self, eqn, flags: list[bool], context: _Context) -> list[bool]:
    name, params = eqn.primitive.name, eqn.params
    everything = [True] * len(eqn.outvars)
    if name in _LINEAR:
      return everything
    if name in _INDEX_OPERANDS:
      if any(flags[_INDEX_OPERANDS[name]]):
        self.refuse(eqn, context, _CONTROL if name == 'select_n' else _NONLINEARITY)
      return everything
    if name in _BILINEAR and sum(flags) <= 1:
      return everything
    if name == 'div' and not flags[1]:
      return everything
    if name == 'integer_pow' and params['y'] == 1:
      return everything
    if name == 'convert_element_type' and jnp.issubdtype(params['new_dtype'], jnp.inexact):
      return everything
    if name in _CALLS:
      inner = next(
        (params[key] for key in ('jaxpr', 'call_jaxpr', 'fun_jaxpr') if key in params), None
      )
      jaxpr = getattr(inner, 'jaxpr', inner)
      if jaxpr is not None and len(jaxpr.invars) == len(flags):
        return self.run(jaxpr, flags, context.inside(eqn))
    if name == 'scan':
      return self._scan(eqn, flags, context.inside(eqn))
    if name == 'cond' and not flags[0]:
      outputs = [
        self.run(branch.jaxpr, flags[1:], context.inside(eqn)) for branch in params['branches']
      ]
      return [any(column) for column in zip(*outputs, strict=True)]
    if name == 'while':
      return self._while(eqn, flags, context)
    self.refuse(eqn, context)
    return everything

  def _scan(self, eqn, flags, context):
    params = eqn.params
    consts, carry = params['num_consts'], params['num_carry']
    carried = flags[consts : consts + carry]
    while True:  # the carry's taint grows monotonically to a fixed point
      outputs = self.run(
        params['jaxpr'].jaxpr, flags[:consts] + carried + flags[consts + carry :], context
      )
      widened = [a or b for a, b in zip(carried, outputs[:carry], strict=True)]
      if widened == carried:
        return outputs
      carried = widened

  def _while(self, eqn, flags, context):
    params = eqn.params
    cond_consts, body_consts = params['cond_nconsts'], params['body_nconsts']
    carried = flags[cond_consts + body_consts :]
    while True:
      outputs = self.run(
        params['body_jaxpr'].jaxpr,
        flags[cond_consts : cond_consts + body_consts] + carried,
        context.inside(eqn),
      )
      widened = [a or b for a, b in zip(carried, outputs, strict=True)]
      if widened == carried:
        break
      carried = widened
    if any(
      self.run(params['cond_jaxpr'].jaxpr, flags[:cond_consts] + carried, context.inside(eqn))
    ):
      self.refuse(eqn, context)
    return carried


def _trace_error(model: nn.Module, error: Exception) -> NotConvertibleError:
  return NotConvertibleError(
    f'{type(model).__name__} could not be traced as a spiking network: in the SNN its layers '
    f'receive inputs with a leading time axis, [T, B, H, W, C] (T = 1 for the first layer), '
    f'and must act on the trailing axes only (flatten with x.reshape(x.shape[:-3] + (-1,))); '
    f'its activations must be cos_jax.Activation(levels, self.spiking). The error was: '
    f'{type(error).__name__}: {error}'
  )


def _activation_outputs(model: nn.Module, variables, images) -> list[jax.ShapeDtypeStruct]:
  """The shape of every activation's output in the spiking model, in call order."""
  shapes, unconverted = [], []

  def record(next_fun, args, kwargs, context):
    if not is_activation_call(context):
      return next_fun(*args, **kwargs)
    if context.module.spiking is None:
      unconverted.append('/'.join((type(model).__name__,) + context.module.path))
    x = args[0]
    shape = (_TRACE_STEPS,) + x.shape[1:]
    shapes.append(jax.ShapeDtypeStruct(shape, x.dtype))
    return jnp.broadcast_to(x, shape)

  def trace(v, x):
    with nn.intercept_methods(record):
      return model.apply(v, x, train=False, mutable=True)[0]

  try:
    jax.eval_shape(trace, variables, images)
  except Exception as error:  # pylint: disable=broad-except
    raise _trace_error(model, error) from error
  if unconverted:
    raise NotConvertibleError(
      f'The activations {", ".join(unconverted)} stay QCFS in the '
      'converted network: create them as cos_jax.Activation(levels, self.spiking), so that '
      'convert can turn them into IF neurons.'
    )
  return shapes


@functools.lru_cache(maxsize=64)
def check_convertible(model: nn.Module) -> None:
  """Raises NotConvertibleError unless `model` (the ANN, spiking=None) converts to an SNN.

  Names every module and source line where the spikes pass through something that is not
  linear in them, and says what to use instead. Cached per model.
  """
  from cos_jax import models  # pylint: disable=import-outside-toplevel

  variables = models.abstract_variables(model)
  spiking = model.clone(spiking=Spiking(_TRACE_STEPS))
  images = jax.ShapeDtypeStruct((1, _TRACE_BATCH) + tuple(model.input_shape), jnp.float32)
  sources = _activation_outputs(spiking, variables, images)
  outputs = iter(range(len(sources)))

  def traced(v, x, spikes):
    def replace(next_fun, args, kwargs, context):
      if is_activation_call(context):
        return spikes[next(outputs)]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(replace):
      return spiking.apply(v, x, train=False, mutable=True)[0]

  try:
    closed = jax.make_jaxpr(traced)(variables, images, sources)
  except Exception as error:  # pylint: disable=broad-except
    raise _trace_error(model, error) from error
  inputs = len(jax.tree.leaves((variables, images)))
  tracker = _Tracker()
  tracker.run(closed.jaxpr, [False] * inputs + [True] * len(sources))
  if tracker.problems:
    lines = [
      f'- {", ".join(operations)} in {path} ({location}): {description}; {advice}.'
      for (path, location, (description, advice)), operations in tracker.problems.items()
    ]
    raise NotConvertibleError(
      f'{type(model).__name__} cannot become a spiking network: between its '
      'cos_jax.Activation layers the spikes may only pass through operations linear in them '
      '(convolutions, dense layers, BatchNorm with running statistics, average pooling, '
      'reshapes, concatenation, residual additions; see "Your own network" in the README). '
      'Found:\n' + '\n'.join(lines)
    )
