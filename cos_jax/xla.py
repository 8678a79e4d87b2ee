"""What makes XLA's CPU backend fast for these networks: compile options (`jit`) and reductions.

XLA's CPU backend hands convolutions and element-wise work to YNNPACK fusions by default
(jaxlib 0.10). On the 2-core AVX2 machines this project is measured on, those fusions run the
weight gradients of 3x3 convolutions far slower than XLA's own kernels: with them, the training
step of ResNet-20 runs 3.6 times and VGG-16's 2.3 times slower (`benchmarks/train_step.py`).
cos_jax therefore compiles its functions with the YNNPACK fusions off on the CPU. The options
are per compiled function (`jax.jit(..., compiler_options=...)`): nothing global changes, other
backends get none, and an XLA that no longer knows an option gets plain `jax.jit`.
"""

import functools
import warnings

import jax
import jax.numpy as jnp

CPU_COMPILER_OPTIONS = {
  'xla_cpu_experimental_ynn_fusion_type': '',  # no YNNPACK fusions: XLA's own CPU kernels
}


@functools.cache
def compiler_options() -> dict[str, str] | None:
  """CPU_COMPILER_OPTIONS on the CPU backend if this XLA accepts them, else None."""
  if jax.default_backend() != 'cpu':
    return None
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(jnp.zeros(())).compile()
  except jax.errors.JaxRuntimeError as error:
    warnings.warn(
      f"This XLA rejects cos_jax's CPU compile options ({error}); compiling "
      'without them, which may be slower.',
      stacklevel=2,
    )
    return None
  return CPU_COMPILER_OPTIONS


def channel_sum(x: jax.Array) -> jax.Array:
  """The sum over every axis but the last (channels); a matrix-vector product on the CPU.

  XLA's CPU backend rewrites a large reduction into a tree of `reduce-window`s, which runs
  several times slower than a product with a vector of ones (BatchNorm's forward and backward
  at VGG-16's first-stage shape: 100 ms -> 55 ms, `benchmarks/train_step.py --parts=parts`).
  Other backends keep the reduction (a float32 product there may run at reduced precision).
  """
  if jax.default_backend() != 'cpu':
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))
  rows = x.reshape(-1, x.shape[-1])
  return jnp.dot(jnp.ones(rows.shape[0], x.dtype), rows, precision=jax.lax.Precision.HIGHEST)


class _Jitted:
  """`jax.jit(fun, **jit_kwargs)` built at its first use, when the backend is known."""

  def __init__(self, fun, jit_kwargs):
    self._fun = fun
    self._jit_kwargs = jit_kwargs
    functools.update_wrapper(self, fun)

  @functools.cached_property
  def jitted(self):
    return jax.jit(self._fun, compiler_options=compiler_options(), **self._jit_kwargs)

  def __call__(self, *args, **kwargs):
    return self.jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    return self.jitted.lower(*args, **kwargs)

  def clear_cache(self):
    self.jitted.clear_cache()


def jit(fun=None, **jit_kwargs):
  """`jax.jit` compiled with `compiler_options()`; usable as `@jit` or `@jit(static_argnames=...)`.

  Only for functions called at the top level: JAX refuses compile options on a jit traced
  inside another transformation.

  Args:
    fun: the function to compile.
    **jit_kwargs: further `jax.jit` arguments (`static_argnames`, `donate_argnums`, ...).
  """
  if fun is None:
    return functools.partial(jit, **jit_kwargs)
  return _Jitted(fun, jit_kwargs)
