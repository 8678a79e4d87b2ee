"""What a short training budget needs beyond the published recipe: a levels schedule (train at
a finer L first) and thresholds chosen from the data instead of the constant 8.

Both are off by default (`config.levels_schedule = ''`, `config.threshold_init = 'constant'`);
docs/results/short_recipe/ measured what each gains on 2 epochs of ResNet-20.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from cos_jax.layers import is_activation_call
from cos_jax.qcfs import qcfs


def parse_levels_schedule(text: str, levels: int) -> list[tuple[float, int]]:
  """A levels schedule ('fraction:L,...') as (fraction, L) phases, checked.

  Each L holds from its fraction of the training steps on; the last L must be `levels`, the L
  the trained model keeps. An empty schedule is one phase: [(0, levels)].
  """
  if not text:
    return [(0.0, levels)]
  try:
    phases = [
      (float(fraction), int(phase_levels))
      for fraction, phase_levels in (entry.split(':') for entry in text.split(','))
    ]
  except ValueError:
    phases = None
  fractions = [fraction for fraction, _ in phases or ()]
  if (
    not phases
    or fractions != sorted(fractions)
    or fractions[0] != 0
    or fractions[-1] >= 1
    or any(phase_levels < 1 for _, phase_levels in phases)
    or phases[-1][1] != levels
  ):
    raise ValueError(
      f'levels_schedule={text!r} must read "fraction:L,fraction:L,..." with fractions rising '
      f'from 0 to below 1, integer L >= 1, and end with levels={levels}, the L the '
      "trained model keeps (e.g. '0:32,0.6:4')."
    )
  return phases


def levels_at(phases: list[tuple[float, int]], step: int, total_steps: int) -> int:
  """The QCFS levels L of training step `step` under the phases of `parse_levels_schedule`."""
  return [levels for fraction, levels in phases if step >= int(fraction * total_steps)][-1]


def data_driven_thresholds(
  model: nn.Module, variables: dict, images: jax.Array, percentile: float
) -> dict:
  """Every QCFS threshold set to a percentile of its layer's input, layer by layer.

  One forward pass in training mode (batch statistics) over `images`: each activation layer,
  in forward order, takes as threshold the `percentile` of the values reaching it, computed with
  the thresholds already chosen for the layers before it, and applies QCFS with it.

  Returns:
    `variables['params']` with every threshold replaced.
  """
  chosen = {}

  def choose(next_fun, args, kwargs, context):
    if not is_activation_call(context):
      return next_fun(*args, **kwargs)
    x = args[0]
    threshold = jnp.maximum(jnp.percentile(x, percentile), jnp.finfo(x.dtype).tiny)
    chosen[tuple(context.module.path)] = threshold
    return qcfs(x, threshold.astype(x.dtype), context.module.levels)

  def forward(variables, images):
    with nn.intercept_methods(choose):
      model.apply(
        variables, images, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)}
      )
    return chosen

  thresholds = jax.jit(forward)(variables, images)
  flat = traverse_util.flatten_dict(variables['params'])
  for path, threshold in thresholds.items():
    flat[path + ('threshold',)] = threshold.astype(flat[path + ('threshold',)].dtype)
  return traverse_util.unflatten_dict(flat)
