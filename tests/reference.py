"""A deliberately simple NumPy re-implementation of the networks, the IF simulation, COS and SRP.

It works layer by layer over whole time sequences, exactly as docs/method.md §§4 and 9 read,
with none of cos_jax's chunking, scans or Flax: an independent check. The test networks are
built from dyadic numbers (small multiples of powers of two), for which every float32 operation
below is exact, so agreement is spike for spike and the ties (potential exactly 1) really occur.
"""

import jax
import numpy as np
from flax import traverse_util

import cos_jax

F32 = np.float32
BN_EPSILON = F32(1e-5)
UNIT_VARIANCE = F32(1) - BN_EPSILON  # var + eps == 1 exactly in float32, so BN scales exactly


def ones_like_variables(model):
  """Variables of the model's shapes, all ones (finite, positive thresholds and variances),
  without compiling its initialisation."""
  return jax.tree.map(lambda s: np.ones(s.shape, s.dtype), cos_jax.models.abstract_variables(model))


def dyadic_variables(model, seed: int) -> dict:
  """Variables for `model` whose every value is a small dyadic number (exact arithmetic)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(cos_jax.models.abstract_variables(model))
  out = {}
  for path, value in flat.items():
    shape = value.shape
    leaf = path[-1]
    if leaf == 'kernel':
      out[path] = rng.integers(-4, 5, shape).astype(F32) / 8
    elif leaf == 'bias':
      out[path] = rng.integers(-2, 3, shape).astype(F32) / 16
    elif leaf == 'scale':
      out[path] = rng.integers(2, 7, shape).astype(F32) / 4
    elif leaf == 'mean':
      out[path] = rng.integers(-2, 3, shape).astype(F32) / 8
    elif leaf == 'var':
      out[path] = np.full(shape, UNIT_VARIANCE, F32)
    elif leaf == 'threshold':
      out[path] = F32(rng.choice([0.5, 1.0, 2.0]))
    else:
      raise AssertionError(path)
  return traverse_util.unflatten_dict(out)


def dyadic_images(shape, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(-8, 9, shape).astype(F32) / 4


def by_layer(values, leaf: str, prefix: str = '') -> dict:
  """{'layer/path': array} of the `leaf` entries of a per-layer tree (shifts, masks)."""
  out = {}
  for key, value in values.items():
    if key == leaf:
      out[prefix.rstrip('/')] = np.asarray(value)
    else:
      out.update(by_layer(value, leaf, f'{prefix}{key}/'))
  return out


# ---- linear layers -------------------------------------------------------------------------


def conv(x, layer, stride=1, padding=None, groups=1):
  """x [N, H, W, C] with a Flax conv's params (HWIO kernel, I = C / groups)."""
  kernel = np.asarray(layer['kernel'], F32)
  kh, kw = kernel.shape[:2]
  pad = kh // 2 if padding is None else padding
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  group_in, group_out = kernel.shape[2], kernel.shape[3] // groups
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]), F32)
  for g in range(groups):
    inputs, outputs = (
      slice(g * group_in, (g + 1) * group_in),
      slice(g * group_out, (g + 1) * group_out),
    )
    for dy in range(kh):
      for dx in range(kw):
        patch = x[
          :, dy : dy + stride * (ho - 1) + 1 : stride, dx : dx + stride * (wo - 1) + 1 : stride
        ]
        out[..., outputs] += patch[..., inputs] @ kernel[dy, dx][:, outputs]
  if 'bias' in layer:
    out += np.asarray(layer['bias'], F32)
  return out


def batch_norm(x, params, stats):
  mul = (
    F32(1) / np.sqrt(np.asarray(stats['var'], F32) + BN_EPSILON) * np.asarray(params['scale'], F32)
  )
  return (x - np.asarray(stats['mean'], F32)) * mul + np.asarray(params['bias'], F32)


def avg_pool(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).sum((2, 4)) / F32(4)


def dense(x, layer):
  return x @ np.asarray(layer['kernel'], F32) + np.asarray(layer['bias'], F32)


# ---- activations -----------------------------------------------------------------------------


def qcfs(z, threshold, levels):
  """The ANN activation, per docs/method.md §1."""
  return threshold * np.clip(np.floor(z * levels / threshold + F32(0.5)) / levels, 0, 1)


def cos_shift(v0, currents):
  """One round of docs/method.md §4, steps 1-4, on [rho, ...] currents in threshold units."""
  v = v0.copy()
  count = np.zeros_like(v0)
  a = np.full_like(v0, np.inf)
  b = np.full_like(v0, -np.inf)
  for current in currents:
    m = v + current
    fired = m >= 1
    a = np.where(fired, np.minimum(a, m), a)
    b = np.where(fired, b, np.maximum(b, m))
    v = m - fired.astype(F32)
    count += fired
  b = np.where(count == len(currents), F32(-1000), b)
  r = v
  too_many = (r < 0) & (count >= 1)
  too_few = r >= 1
  return np.where(
    too_many,
    -np.maximum(a - F32(0.999), F32(1)),
    np.where(too_few, np.maximum(F32(1.001) - b, F32(1)), F32(0)),
  ).astype(F32)


class Simulation:
  """IF layers over whole sequences: `act(name, currents [steps, B, ...])` -> outputs.

  With `tau`, SRP: after step tau each layer keeps the mask of its neurons whose potential is
  above 1e-3, restarts at 1/2 and masks its outputs from step tau + 1 on.
  """

  def __init__(self, params, rho: int, rounds: int, shifts=None, tau: int = 0):
    self.params, self.rho, self.rounds, self.tau = params, rho, rounds, tau
    self.given_shifts = shifts
    self.shifts, self.masks = {}, {}

  def act(self, name, currents):
    theta = F32(self.params[name]['threshold'])
    x = (currents / theta).astype(F32)
    shift = np.zeros(x.shape[1:], F32)
    if self.given_shifts is not None:
      shift = self.given_shifts[name]
    for _ in range(self.rounds if self.rho else 0):
      shift = (shift + cos_shift(F32(0.5) + shift, x[: self.rho])).astype(F32)
    self.shifts[name] = shift
    v = F32(0.5) + shift
    mask = np.ones(x.shape[1:], F32)
    outputs = np.zeros_like(x)
    for t in range(len(x)):
      m = v + x[t]
      spikes = (m >= 1).astype(F32)
      v = m - spikes
      outputs[t] = spikes * mask * theta
      if self.tau and t + 1 == self.tau:
        self.masks[name] = v > F32(1e-3)
        mask = self.masks[name].astype(F32)
        v = np.full_like(v, F32(0.5))
    return outputs


def _over_time(fn, x):
  """Applies a per-image function to [steps, B, ...], one step at a time."""
  return np.stack([fn(step) for step in x])


def tiny_net(variables, images, act):
  """TinyNet with `act(name, x)`: x is [steps, B, ...] (steps = 1 for the ANN)."""
  p, s = variables['params'], variables['batch_stats']
  x = images[None]
  for i in (1, 2):
    x = _over_time(lambda y, i=i: batch_norm(conv(y, p[f'conv{i}']), p[f'bn{i}'], s[f'bn{i}']), x)
    x = _over_time(avg_pool, act(f'act{i}', x))
  x = _over_time(lambda y: dense(y.reshape(len(y), -1), p['fc']), x)
  x = act('act_fc', x)
  return _over_time(lambda y: dense(y, p['head']), x)


def _conv_bn(conv_params, bn_params, bn_stats, stride=1, padding=None):
  return lambda y: batch_norm(conv(y, conv_params, stride, padding), bn_params, bn_stats)


def tiny_resnet(variables, images, act, model):
  """A ResNet of BasicBlocks (CIFAR stem) with `act(name, x)` as in `tiny_net`."""
  p, s = variables['params'], variables['batch_stats']
  x = _over_time(
    lambda y: batch_norm(conv(y, p['stem_conv']), p['stem_bn'], s['stem_bn']), images[None]
  )
  x = act('stem_act', x)
  for stage, (size, stride) in enumerate(zip(model.stage_sizes, model.strides, strict=True)):
    for block in range(size):
      name = f'stage{stage + 1}_block{block}'
      bp, bs = p[name], s[name]
      step = stride if block == 0 else 1
      y = _over_time(_conv_bn(bp['conv1'], bp['bn1'], bs['bn1'], step), x)
      y = act(f'{name}/act1', y)
      y = _over_time(_conv_bn(bp['conv2'], bp['bn2'], bs['bn2']), y)
      shortcut = x
      if 'shortcut_conv' in bp:
        shortcut = _over_time(
          _conv_bn(bp['shortcut_conv'], bp['shortcut_bn'], bs['shortcut_bn'], step, 0), x
        )
      x = act(f'{name}/act_out', y + np.broadcast_to(shortcut, y.shape))
  x = x.mean(axis=(2, 3), dtype=F32)
  return _over_time(lambda y: dense(y, p['head']), x)


def vgg11_like(variables, images, act):
  """tests.custom_networks.VGG11Like with `act(name, x)` as in `tiny_net`."""
  p, s = variables['params'], variables['batch_stats']
  x = images[None]
  for stage, convs in enumerate((1, 1, 2, 2, 2)):
    for index in range(convs):
      name = f'{stage}_{index}'
      x = act(
        f'act{name}', _over_time(_conv_bn(p[f'conv{name}'], p[f'bn{name}'], s[f'bn{name}']), x)
      )
    x = _over_time(avg_pool, x)
  x = x.reshape(x.shape[:2] + (-1,))
  for index in (1, 2):
    x = act(f'act_fc{index}', _over_time(lambda y, i=index: dense(y, p[f'fc{i}']), x))
  return _over_time(lambda y: dense(y, p['head']), x)


def separable_net(variables, images, act):
  """tests.custom_networks.SeparableNet with `act(name, x)` as in `tiny_net`."""
  p, s = variables['params'], variables['batch_stats']

  def conv_bn_act(x, name, groups=1):
    conv_bn = lambda y: batch_norm(
      conv(y, p[f'{name}_conv'], groups=groups), p[f'{name}_bn'], s[f'{name}_bn']
    )
    return act(f'{name}_act', _over_time(conv_bn, x))

  x = conv_bn_act(images[None], 'stem')
  pointwise = conv_bn_act(x, 'branch1')
  separable = conv_bn_act(conv_bn_act(x, 'depthwise', groups=x.shape[-1]), 'pointwise')
  pointwise = np.broadcast_to(pointwise, separable.shape)
  pooled = _over_time(avg_pool, np.concatenate([pointwise, separable], axis=-1))
  x = conv_bn_act(pooled, 'mix')
  x = act('residual_act', x + F32(0.5) * np.broadcast_to(pooled, x.shape))
  return _over_time(lambda y: dense(y, p['head']), x.mean(axis=(2, 3), dtype=F32))


def flat_thresholds(params) -> dict:
  """{'layer/path': {'threshold': value}} for every activation layer."""
  return {
    '/'.join(path[:-1]): {'threshold': value}
    for path, value in traverse_util.flatten_dict(params).items()
    if path[-1] == 'threshold'
  }


def ann_logits(network, variables, images, levels, **kwargs):
  thresholds = flat_thresholds(variables['params'])
  act = lambda name, x: qcfs(x, F32(thresholds[name]['threshold']), levels)
  return network(variables, images, act, **kwargs)[0]


def snn_logits(network, variables, images, steps, rho=0, rounds=1, shifts=None, **kwargs):
  """[steps, B, C] per-step logits and the shifts; every layer runs max(steps, rho) steps."""
  sim = Simulation(flat_thresholds(variables['params']), rho, rounds, shifts)
  total = max(steps, rho)
  act = lambda name, x: sim.act(name, np.broadcast_to(x, (total,) + x.shape[1:]))
  return network(variables, images, act, **kwargs)[:steps], sim.shifts


def srp_logits(network, variables, images, steps, tau, **kwargs):
  """SRP: [steps, B, C] logits of the steps after the tau pre-simulation steps, and the masks;
  every layer runs tau + steps steps."""
  sim = Simulation(flat_thresholds(variables['params']), 0, 1, tau=tau)
  act = lambda name, x: sim.act(name, np.broadcast_to(x, (tau + steps,) + x.shape[1:]))
  return network(variables, images, act, **kwargs)[tau:], sim.masks
