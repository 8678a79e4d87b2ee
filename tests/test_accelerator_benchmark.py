"""benchmarks/accelerator.py, the device check, runs every part at tiny sizes on the CPU and
writes what a machine with an accelerator will be asked for."""

import json

from benchmarks import accelerator


def test_the_device_check_runs_every_part_and_writes_its_json(tmp_path):
  out = tmp_path / 'accelerator.json'
  accelerator.main(['--tiny', f'--out={out}'])
  result = json.loads(out.read_text())
  assert result['device']['backend'] == 'cpu' and result['machine']['backend'] == 'cpu'
  (exactness,) = result['exactness']
  assert exactness['dtype'] == 'float32' and exactness['precision'] == 'highest'
  assert 0.9 <= exactness['equal_rows_rho0'] <= 1  # float32 ties may flip a few spikes
  assert [(r['dtype'], r['images_per_second'] > 0) for r in result['training_step']] == [
    ('float32', True),
    ('bfloat16', True),
  ]
  (cos,) = result['fused_cos']
  assert cos['T'] == 8 and cos['rho'] == 4 and cos['ratio_to_ann_bound'] > 0
  assert [r['workers'] for r in result['input_pipeline']] == [0, 1]
  assert all(r['images_per_second'] > 0 for r in result['input_pipeline'])
  assert 'peak_memory_bytes' in result  # None where the backend does not report it
