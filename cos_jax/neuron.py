"""The integrate-and-fire neuron, the offset-spike calibration rule (COS) and the residual-potential
mask of SRP (docs/method.md §§2, 4, 5, 9).

Everything here works in units of the threshold: the input current is already divided by theta,
the neuron fires when its potential reaches 1 and is reset by subtracting 1. Arrays are time-major:
`currents[t]` is the current of step t + 1.
"""

import jax
import jax.numpy as jnp

INITIAL_POTENTIAL = 0.5
"""v(0) = theta / 2, in threshold units, before any calibration shift."""

EARLY_SPIKE_MARGIN = 0.999
"""COS, one spike too many: the new initial potential is 1/2 - max(a - EARLY_SPIKE_MARGIN, 1)."""

LATE_SPIKE_MARGIN = 1.001
"""COS, one spike too few: the new initial potential is 1/2 + max(LATE_SPIKE_MARGIN - b, 1)."""

NO_SILENT_STEP = -1000.0
"""COS: the value of b (largest potential of a step that did not fire) when every step fired."""

RESIDUAL_BOUND = 1e-3
"""SRP: a neuron whose potential after the tau pre-simulation steps is at most this (in threshold
units) is silenced from then on; one above it keeps firing."""

MAX_UNROLL = 8
"""Time steps of a neuron scan unrolled into straight-line code.

Unrolled scans run twice as fast on the CPU as rolled ones, and the default chunks (rho steps
with COS, 8 without) are unrolled whole. A longer chunk or rho is a loop over blocks of
MAX_UNROLL steps, so that its compile time and program size stay those of 8 steps (unrolled
whole, a chunk of 1,000 steps took minutes and gigabytes to compile).
"""


def if_step(potential: jax.Array, current: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One step of the IF neuron: `(v(t-1), I(t)/theta) -> (v(t), s(t))`, firing at >= 1."""
  before_firing = potential + current
  spikes = (before_firing >= 1.0).astype(current.dtype)
  return before_firing - spikes, spikes


def run_if(initial_potential: jax.Array, currents: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Runs the IF neuron over the leading (time) axis of `currents`.

  Args:
    initial_potential: v(0), shaped like one step of `currents`.
    currents: [steps, ...] input currents in threshold units.

  Returns:
    `(v(steps), spikes)` with spikes shaped like `currents`.
  """
  return jax.lax.scan(
    if_step, initial_potential, currents, unroll=min(currents.shape[0], MAX_UNROLL)
  )


def presimulate(initial_potential: jax.Array, currents: jax.Array) -> dict[str, jax.Array]:
  """The COS pre-simulation statistics over the steps of `currents` (docs/method.md §4, step 1).

  Returns:
    A dict with `count` (spikes fired), `residual` (the final potential), `lowest_fired` (a: the
    smallest pre-firing potential over the steps that fired, +inf if none) and `highest_silent`
    (b: the largest potential over the steps that did not fire, NO_SILENT_STEP if none).
  """

  def step(carry, current):
    potential, count, lowest_fired, highest_silent = carry
    before_firing = potential + current
    fired = before_firing >= 1.0
    spikes = fired.astype(current.dtype)
    lowest_fired = jnp.where(fired, jnp.minimum(lowest_fired, before_firing), lowest_fired)
    highest_silent = jnp.where(fired, highest_silent, jnp.maximum(highest_silent, before_firing))
    return (before_firing - spikes, count + spikes, lowest_fired, highest_silent), None

  zeros = jnp.zeros_like(initial_potential)
  init = (initial_potential, zeros, zeros + jnp.inf, zeros - jnp.inf)
  (residual, count, lowest_fired, highest_silent), _ = jax.lax.scan(
    step, init, currents, unroll=min(currents.shape[0], MAX_UNROLL)
  )
  every_step_fired = count == currents.shape[0]
  highest_silent = jnp.where(every_step_fired, NO_SILENT_STEP, highest_silent)
  return dict(
    count=count, residual=residual, lowest_fired=lowest_fired, highest_silent=highest_silent
  )


def cos_shift(initial_potential: jax.Array, currents: jax.Array) -> jax.Array:
  """One round of the COS rule: the change of the initial potential (docs/method.md §4, steps 1-4).

  Args:
    initial_potential: the initial potential the pre-simulation starts from.
    currents: [rho, ...] the first rho input currents, in threshold units.

  Returns:
    The shift to add to `initial_potential`, in threshold units, shaped like one step.
  """
  stats = presimulate(initial_potential, currents)
  one_too_many = (stats['residual'] < 0) & (stats['count'] >= 1)
  one_too_few = stats['residual'] >= 1
  earlier = -jnp.maximum(stats['lowest_fired'] - EARLY_SPIKE_MARGIN, 1.0)
  later = jnp.maximum(LATE_SPIKE_MARGIN - stats['highest_silent'], 1.0)
  return jnp.where(one_too_many, earlier, jnp.where(one_too_few, later, 0.0))


def calibrated_shift(currents: jax.Array, rounds: int) -> jax.Array:
  """The total COS shift after `rounds` rounds of the rule on the same rho currents.

  Round 1 starts from INITIAL_POTENTIAL; each later round starts from the potential the rounds
  before it chose, and its shift is added to theirs.
  """

  def one_round(_, shift):
    return shift + cos_shift(INITIAL_POTENTIAL + shift, currents)

  return jax.lax.fori_loop(0, rounds, one_round, jnp.zeros(currents.shape[1:], currents.dtype))


def desired_count(total_current: jax.Array, steps: int) -> jax.Array:
  """The spike count a neuron should emit over `steps` steps: clip(floor(Q + 1/2), 0, steps)."""
  return jnp.clip(jnp.floor(total_current + 0.5), 0, steps)


def residual_mask(potential: jax.Array) -> jax.Array:
  """SRP's mask (docs/method.md §9): whether a neuron ends the pre-simulation with a residual
  potential above RESIDUAL_BOUND, compared in the potential's own dtype."""
  return potential > RESIDUAL_BOUND
