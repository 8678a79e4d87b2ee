"""Shared test networks and a finished test run: built once per session (per worker), so that
their compiled functions are shared too."""

import dataclasses
from pathlib import Path

import pytest

import cos_jax
from configs import test as test_config
from cos_jax import training
from tests import reference

ROOT = Path(__file__).resolve().parents[1]
SMALL_RESNET = dict(stage_sizes=(1, 1), widths=(4, 8), strides=(1, 2), stem_width=4)
"""A ResNet with one block per stage and a projection shortcut: small enough to check by hand."""


def config_with(**overrides):
  """configs/test.py with `overrides` applied."""
  config = test_config.get_config()
  config.update(overrides)
  return config


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory):
  """(workdir, final state) of a whole configs/test.py run; copy the workdir to change it."""
  workdir = tmp_path_factory.mktemp('run')
  state = training.train_and_evaluate(config_with(), str(workdir))
  return workdir, state


@dataclasses.dataclass(frozen=True)
class Net:
  model: object
  variables: dict
  network: object  # the NumPy reference forward
  kwargs: dict

  @property
  def snn(self):
    return cos_jax.convert(self.model, self.variables)


@pytest.fixture(scope='session')
def tiny_net():
  model = cos_jax.create_model('tiny', num_classes=5, levels=4)
  return Net(model, reference.dyadic_variables(model, 1), reference.tiny_net, {})


@pytest.fixture(scope='session')
def tiny_resnet():
  model = cos_jax.models.ResNet(num_classes=3, levels=2, input_shape=(8, 8, 2), **SMALL_RESNET)
  return Net(model, reference.dyadic_variables(model, 2), reference.tiny_resnet, {'model': model})


@pytest.fixture(scope='session', params=['tiny_net', 'tiny_resnet'])
def net(request):
  return request.getfixturevalue(request.param)
