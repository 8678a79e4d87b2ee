"""cos_jax: QCFS networks converted to spiking networks, calibrated with offset spikes (COS)
or run with residual-potential masks (SRP)."""

from cos_jax.convertibility import NotConvertibleError
from cos_jax.layers import Activation, Spiking
from cos_jax.models import ARCHITECTURES, create_model, init_variables
from cos_jax.precision import PRECISIONS
from cos_jax.qcfs import qcfs
from cos_jax.snn import (
  DEFAULT_CHUNK,
  OFFSET_SPIKE_BINS,
  SNN,
  Masks,
  Shifts,
  calibrate,
  calibrate_and_simulate,
  convert,
  neuron_counts,
  simulate,
  srp_masks,
  srp_simulate,
)
from cos_jax.torch_import import export_state_dict, load_torch_checkpoint

__all__ = [
  'ARCHITECTURES',
  'Activation',
  'DEFAULT_CHUNK',
  'Masks',
  'NotConvertibleError',
  'OFFSET_SPIKE_BINS',
  'PRECISIONS',
  'SNN',
  'Shifts',
  'Spiking',
  'calibrate',
  'calibrate_and_simulate',
  'convert',
  'create_model',
  'export_state_dict',
  'init_variables',
  'load_torch_checkpoint',
  'neuron_counts',
  'qcfs',
  'simulate',
  'srp_masks',
  'srp_simulate',
]
