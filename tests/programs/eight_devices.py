"""On 8 CPU devices: trains configs/test.py in argv[1], then takes one step and writes the
conversion report on all 8 devices and on one, and prints the largest parameter difference and
both reports' accuracies as one JSON line."""

import functools
import json
import pathlib
import sys

import jax
import numpy as np

from configs import test as test_config
from cos_jax import conversion_report, parallel, run_state, sources, training

assert jax.device_count() == 8, jax.device_count()
config = test_config.get_config()
config.conversion.num_examples = 32
state = training.train_and_evaluate(config, sys.argv[1] + '/eight')
dataset = sources.load(config)
images, labels = dataset.train.images[:32], dataset.train.labels[:32]
step = jax.jit(
  functools.partial(training.train_step, mean=tuple(config.mean), std=tuple(config.std))
)
key = jax.random.key(3)
eight = parallel.data_mesh()
single = jax.make_mesh(
  (1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
)
model = run_state.create_model(config)
outcome = {}
for name, mesh in (('eight', eight), ('one', single)):
  parallel.data_mesh = lambda mesh=mesh: mesh
  stepped, _ = step(
    parallel.replicate(state, mesh), *parallel.shard_batch(mesh, images, labels), key
  )
  variables = jax.device_get({'params': state.params, 'batch_stats': state.batch_stats})
  report_dir = pathlib.Path(sys.argv[1], f'report_{name}')
  report_dir.mkdir()
  report = conversion_report.write_report(config, report_dir, model, variables, dataset.test)
  outcome[name] = {
    'params': jax.device_get(stepped.params),
    'ann': report['ann_accuracy'],
    'cos': report['methods']['cos_rho2']['accuracy_by_T'],
  }
difference = max(
  float(np.abs(a - b).max())
  for a, b in zip(
    jax.tree.leaves(outcome['eight']['params']),
    jax.tree.leaves(outcome['one']['params']),
    strict=True,
  )
)
print(
  json.dumps(
    {
      'difference': difference,
      'accuracies': [outcome[n]['cos'] for n in ('eight', 'one')],
      'ann': [outcome[n]['ann'] for n in ('eight', 'one')],
    }
  )
)
