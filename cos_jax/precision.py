"""The precision of the convolutions and matrix products a computation runs at.

JAX computes float32 convolutions and matrix products at the backend's default precision: full
float32 on CPUs, but one bfloat16 pass on TPUs and TF32 on recent GPUs. An IF neuron compares its
potential with its threshold and COS computes its shifts from the potentials, so currents rounded
to 8 significant bits change the spikes. cos_jax therefore runs the SNN (conversion report
included) at 'highest' by default, full precision of the variables' dtype on every backend, and
lets a user choose a faster one knowingly; training keeps JAX's default unless the config asks.

The choice is scoped (`jax.default_matmul_precision` around the call that traces and compiles),
so it overrides a global `jax_default_matmul_precision` for cos_jax's functions only, and each
precision compiles once.
"""

import contextlib

import jax

PRECISIONS = ('highest', 'high', 'default')
"""'highest': full precision of the dtype (float32: six bfloat16 passes on TPUs, no TF32 on GPUs);
'high': three bfloat16 passes on TPUs, TF32 on GPUs; 'default': the backend's fastest (one
bfloat16 pass on TPUs). On CPUs all three compute in full float32."""

SNN_PRECISION = 'highest'
"""The default of the SNN functions and of `config.conversion.precision`."""


def check_precision(precision) -> None:
  if precision not in PRECISIONS:
    raise ValueError(
      f'precision must be one of {list(PRECISIONS)}, got {precision!r}: '
      f"'highest' keeps full precision (the default of the SNN functions)."
    )


@contextlib.contextmanager
def matmul_precision(precision: str | None):
  """Runs the enclosed calls' convolutions and matrix products at `precision` (None: as JAX's
  own default_matmul_precision setting says)."""
  if precision is None:
    yield
    return
  check_precision(precision)
  with jax.default_matmul_precision(precision):
    yield
