"""The IF neuron and the COS rule against hand-computed sequences and the QCFS theorem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cos_jax import neuron
from cos_jax.qcfs import qcfs


def _run(v0, currents):
  potential, spikes = jax.jit(neuron.run_if)(jnp.float32(v0), jnp.asarray(currents, jnp.float32))
  return float(potential), np.asarray(spikes).tolist()


def test_if_neuron_hand_computed_sequence():
  # v: 0.5 -> m 0.9 (no) -> m 1.5 fire, v 0.5 -> m 1.0 fire (>= ties fire), v 0 -> m -0.25, v -0.25
  potential, spikes = _run(0.5, [0.4, 0.6, 0.5, -0.25])
  assert spikes == [0, 1, 1, 0]
  assert potential == -0.25


def test_if_neuron_fires_at_most_once_per_step():
  potential, spikes = _run(0.5, [3.0, 3.0])
  assert spikes == [1, 1]
  assert potential == 4.5  # 0.5 + 3 - 1 + 3 - 1


@pytest.mark.parametrize('levels', [1, 2, 4, 8, 16])
def test_constant_current_over_L_steps_gives_the_qcfs_count(levels):
  """QCFS theorem: from theta/2, L steps of a constant current z emit QCFS(z) / (theta / L)."""
  rng = np.random.default_rng(levels)
  thresholds = np.float32([0.5, 1.0, 2.0, 8.0])
  # A dyadic grid holds the exact ties (z * L / theta + 1/2 an integer); random values the rest.
  grid = np.arange(-2 * levels * 64, 2 * levels * 64 + 1) / (levels * 64)
  fractions = np.concatenate([grid, rng.uniform(-0.5, 1.5, 4000)]).astype(np.float32)
  for theta in thresholds:
    z = fractions * theta
    current = jnp.broadcast_to(jnp.asarray(z / theta), (levels, z.size))
    _, spikes = neuron.run_if(jnp.full(z.size, 0.5, jnp.float32), current)
    expected = np.asarray(qcfs(jnp.asarray(z), jnp.float32(theta), levels)) / theta * levels
    np.testing.assert_array_equal(np.asarray(spikes.sum(0)), np.round(expected))


def _shift(currents, v0=0.5):
  currents = jnp.asarray(currents, jnp.float32)[:, None]
  return float(neuron.cos_shift(jnp.full(1, v0, jnp.float32), currents)[0])


def test_cos_one_spike_too_many():
  # m: 1.4 fire (a = 1.4), v 0.4; m 0.4, v 0.4; m -0.1 -> r = -0.1 < 0 with n = 1.
  assert _shift([0.9, 0.0, -0.5]) == pytest.approx(-1.0)  # max(1.4 - 0.999, 1) = 1
  # a large: m 3.5 fires first (a = 3.5), then drops below zero.
  assert _shift([3.0, -3.0]) == pytest.approx(-(3.5 - 0.999), abs=1e-6)
  # the shifted start fires one spike less: the count drops from 1 to 0
  _, spikes = _run(0.5 + _shift([0.9, 0.0, -0.5]), [0.9, 0.0, -0.5])
  assert sum(spikes) == 0


def test_cos_one_spike_too_few():
  # m 0.8, 1.1 fire -> v 0.1, m 0.4 ... r = v(rho): 0.5+0.3+0.3+0.3 = 1.4 - 1 = 0.4 -> no shift
  assert _shift([0.3, 0.3, 0.3]) == 0.0
  # r >= 1: 0.5 + 0.6 = 1.1 fire -> 0.1; + 0.6 -> 0.7 (b = 0.7); + 1.0 -> 1.7 fire -> 0.7 ...
  # currents [0.6, 0.6, 1.0, 0.6]: v 0.1, 0.7(silent, b=0.7), 0.7 (m 1.7 fired), 0.3 (m 1.3 fired)
  assert _shift([0.6, 0.6, 1.0, 0.6]) == 0.0
  # silent all along but r >= 1 is impossible without firing; a negative-then-positive case:
  # v: 0.5 -> m 0.9 silent (b 0.9) -> m 1.5? use currents [0.4, 0.59]: m 0.9, m 1.49 fires -> 0.49
  # r >= 1 case: currents [0.9, 0.9]: m 1.4 fire v 0.4, m 1.3 fire v 0.3 -> r 0.3; no shift.
  # One too few: [0.4, -0.5, 1.6]: m 0.9 silent, m 0.4 silent, m 2.0 fires v 1.0 -> r = 1 >= 1.
  assert _shift([0.4, -0.5, 1.6]) == pytest.approx(max(1.001 - 0.9, 1.0))


def test_cos_saturated_neuron_fires_at_every_step():
  # every step fires and r >= 1: b = -1000, shift = 1.001 + 1000
  shift = _shift([2.0, 2.0, 2.0])
  assert shift == pytest.approx(1001.001, rel=1e-6)
  _, spikes = _run(0.5 + shift, [2.0] * 10)
  assert spikes == [1] * 10


def test_cos_no_shift_when_the_count_is_right():
  assert _shift([0.5, 0.5, 0.5, 0.5]) == 0.0
  assert _shift([-0.2, -0.2]) == 0.0  # r < 0 but no spike: nothing to take back


def test_presimulate_statistics():
  stats = neuron.presimulate(
    jnp.full(1, 0.5, jnp.float32), jnp.asarray([[0.25], [0.5], [-0.5], [1.0]], jnp.float32)
  )
  # m: 0.75 silent, 1.25 fire (v .25), -0.25 silent, 0.75 silent
  assert float(stats['count'][0]) == 1
  assert float(stats['residual'][0]) == 0.75
  assert float(stats['lowest_fired'][0]) == 1.25
  assert float(stats['highest_silent'][0]) == 0.75


def test_calibrated_shift_rounds_add_up():
  currents = jnp.asarray([[0.9], [0.0], [-0.5]], jnp.float32)
  one = neuron.calibrated_shift(currents, 1)
  two = neuron.calibrated_shift(currents, 2)
  second = neuron.cos_shift(neuron.INITIAL_POTENTIAL + one, currents)
  np.testing.assert_array_equal(np.asarray(two), np.asarray(one + second))


def test_qcfs_gradient_reaches_the_threshold_and_floor_is_straight_through():
  z = jnp.asarray([0.3, 1.1, 5.0, 9.0, -1.0, -3.0])
  grad_z = jax.grad(lambda z: qcfs(z, jnp.float32(8.0), 4).sum())(z)
  # Inside the closed interval (0.3 and -1.0 quantize to exactly 0) the gradient passes whole,
  # as with PyTorch's clamp; 9.0 (level 1.25) and -3.0 (level -0.25) are clipped.
  np.testing.assert_array_equal(np.asarray(grad_z), [1, 1, 1, 0, 1, 0])
  grad_theta = jax.grad(lambda t: qcfs(z, t, 4).sum())(jnp.float32(8.0))
  assert float(grad_theta) != 0.0


def test_long_scans_compile_to_a_bounded_program():
  """A chunk or rho of hundreds of steps is a loop, not hundreds of unrolled steps: the
  compiled program of 1,000 steps is no larger than that of 16, and the results are the
  fully unrolled ones."""
  sizes = {}
  for steps in (16, 1000):
    currents = jax.ShapeDtypeStruct((steps, 4), jnp.float32)
    potential = jax.ShapeDtypeStruct((4,), jnp.float32)
    sizes[steps] = {
      name: len(jax.jit(fn).lower(potential, currents).as_text())
      for name, fn in (('run_if', neuron.run_if), ('cos_shift', neuron.cos_shift))
    }
  for name in sizes[16]:
    assert sizes[1000][name] <= 1.1 * sizes[16][name], (name, sizes)
  currents = jnp.asarray(np.random.default_rng(0).normal(0.4, 0.6, (37, 50)), jnp.float32)
  v0 = jnp.full((50,), 0.5, jnp.float32)
  unrolled = jax.lax.scan(neuron.if_step, v0, currents, unroll=True)
  for a, b in zip(
    jax.tree.leaves(neuron.run_if(v0, currents)), jax.tree.leaves(unrolled), strict=True
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
