"""Every convolution and matrix product of the SNN path runs at full precision by default, on
every backend and whatever global default a user has set; `precision` chooses another knowingly;
training keeps JAX's default unless the config says otherwise.

The CPU computes every precision in full float32, so these tests read the precision each
compiled program asks the backend for, in its lowered StableHLO.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cos_jax
from benchmarks import precision_loss
from cos_jax import conversion_report, models, precision, run_state, snn, sources, training
from tests.conftest import config_with

IMAGES = np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32)


def precisions_asked(hlo: str, ops=('stablehlo.convolution', 'stablehlo.dot_general')) -> list:
  """The precisions (DEFAULT, HIGH, HIGHEST) each convolution or dot product of `hlo` asks for."""
  asked = [
    set(re.findall(r'\b(DEFAULT|HIGHEST|HIGH)\b', line))
    for line in hlo.splitlines()
    if any(op in line for op in ops)
  ]
  assert asked, 'no convolution or dot product in the program'
  return asked


class _Lowerings:
  """Stands in for a jitted function: lowers each call first (under the precision then in
  force) and keeps the StableHLO text, then runs it."""

  def __init__(self, jitted):
    self.jitted, self.texts = jitted, []

  def __call__(self, *args, **kwargs):
    self.texts.append(self.jitted.lower(*args, **kwargs).as_text())
    return self.jitted(*args, **kwargs)


@pytest.fixture
def snn_lowerings(monkeypatch):
  lowerings = _Lowerings(snn._simulate_jit)
  monkeypatch.setattr(snn, '_simulate_jit', lowerings)
  srp_lowerings = _Lowerings(snn._srp_jit)
  srp_lowerings.texts = lowerings.texts  # one list: every SNN program, COS's and SRP's
  monkeypatch.setattr(snn, '_srp_jit', srp_lowerings)
  return lowerings


def _run_every_snn_function(network, **precision):
  shifts = cos_jax.calibrate(network, IMAGES, rho=2, **precision)
  cos_jax.simulate(network, IMAGES, 3, shifts, **precision)
  cos_jax.simulate(network, IMAGES, 3, **precision)
  cos_jax.calibrate_and_simulate(network, IMAGES, 3, rho=2, statistics_T=2, **precision)
  masks = cos_jax.srp_masks(network, IMAGES, tau=2, **precision)
  cos_jax.simulate(network, IMAGES, 3, masks=masks, **precision)
  cos_jax.srp_simulate(network, IMAGES, 3, tau=2, statistics_T=2, **precision)


def test_the_snn_runs_at_full_precision_even_under_a_lower_global_default(tiny_net, snn_lowerings):
  with jax.default_matmul_precision('bfloat16'):  # what a user may have set for the whole process
    _run_every_snn_function(cos_jax.convert(tiny_net.model, tiny_net.variables))
  assert len(snn_lowerings.texts) == 7
  for text in snn_lowerings.texts:
    assert all(asked == {'HIGHEST'} for asked in precisions_asked(text))


def test_precision_default_asks_for_the_backends_fastest(tiny_net, snn_lowerings):
  _run_every_snn_function(cos_jax.convert(tiny_net.model, tiny_net.variables), precision='default')
  for text in snn_lowerings.texts:
    assert all(asked == {'DEFAULT'} for asked in precisions_asked(text))


def test_an_unknown_precision_is_refused(tiny_net):
  network = cos_jax.convert(tiny_net.model, tiny_net.variables)
  with pytest.raises(ValueError, match=r"precision must be one of \['highest', 'high', 'default'"):
    cos_jax.simulate(network, IMAGES, 2, precision='bf16')
  config = config_with()
  config.conversion.precision = 'fast'
  with pytest.raises(ValueError, match=r"conversion.precision='fast' \(one of"):
    training.train_and_evaluate(config, '/nonexistent/refused/before/anything')


@pytest.mark.parametrize('chosen', ['highest', 'default'])
def test_the_reports_ann_pass_and_snn_run_at_the_configs_precision(
  chosen, snn_lowerings, monkeypatch
):
  ann_lowerings = _Lowerings(conversion_report._ann_correct)
  monkeypatch.setattr(conversion_report, '_ann_correct', ann_lowerings)
  config = config_with()
  config.conversion.update(
    precision=chosen, num_examples=8, batch_size=8, max_T=2, statistics_T=2, rhos=()
  )
  model = run_state.create_model(config)
  variables = jax.device_get(models.init_variables(model, jax.random.key(0)))
  with jax.default_matmul_precision('bfloat16'):
    report = conversion_report.evaluate_conversion(
      config, model, variables, sources.load(config).test
    )
  assert report['precision'] == chosen
  assert len(ann_lowerings.texts) == 1
  assert len(snn_lowerings.texts) == 2  # the plain conversion and SRP (tau = 2)
  for text in ann_lowerings.texts + snn_lowerings.texts:
    assert all(asked == {chosen.upper()} for asked in precisions_asked(text))


def test_training_keeps_jaxs_default_unless_the_config_asks(monkeypatch, tmp_path):
  with jax.default_matmul_precision('bfloat16'):
    with precision.matmul_precision(None):  # train_precision='': whatever JAX's setting is
      assert jax.config.jax_default_matmul_precision == 'bfloat16'
  lowerings, make_step = [], training._jitted_train_step.__wrapped__

  def lowering_step_factory(*factory_args):
    lowerings.append(_Lowerings(make_step(*factory_args)))
    return lowerings[-1]

  monkeypatch.setattr(training, '_jitted_train_step', lowering_step_factory)
  config = config_with(num_epochs=1, eval_every_epochs=0, train_precision='highest')
  config.conversion.enabled = False
  training.train_and_evaluate(config, str(tmp_path))
  # BatchNorm's statistics are products at HIGHEST on the CPU whatever the setting (cos_jax.xla),
  # so only the convolutions tell.
  convolutions = precisions_asked(lowerings[0].texts[0], ops=('stablehlo.convolution',))
  assert all(asked == {'HIGHEST'} for asked in convolutions)


def test_the_emulated_bfloat16_pass_is_a_bfloat16_product_accumulated_in_float32():
  """benchmarks/precision_loss.py emulates the TPU default on the CPU by rounding operands."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((8, 64), (64, 5)))
  emulated = jnp.dot(
    precision_loss.round_to_bfloat16(a),
    precision_loss.round_to_bfloat16(b),
    precision=jax.lax.Precision.HIGHEST,
  )
  one_pass = jax.lax.dot(
    a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32
  )
  np.testing.assert_allclose(emulated, one_pass, rtol=1e-6, atol=1e-6)
  assert not np.allclose(emulated, jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST), atol=1e-4)
  variables = {'params': {'conv': {'kernel': a, 'bias': a[0]}}}
  rounded = precision_loss.one_bfloat16_pass(variables)['params']['conv']
  assert (rounded['kernel'] == precision_loss.round_to_bfloat16(a)).all()
  assert (rounded['bias'] == a[0]).all()  # added after the product, in float32
