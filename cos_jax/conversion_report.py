"""The conversion report: ANN, plain QCFS conversion, COS and SRP accuracy at every T, offset
spikes, firing rates, synaptic operations and an energy estimate, written into the workdir as
JSON and, through `report_rendering`, as markdown and PNG; and convert.py's entry point,
`convert_and_report`.

Energy constants (Horowitz, ISSCC 2014, 45 nm, 32-bit float): a multiply-accumulate costs
ENERGY_MAC_PJ, an accumulate (one synaptic event of a spike) ENERGY_AC_PJ. The SNN pays MACs only
in its first layer, whose input is the analog image (computed once), and an accumulate per
synaptic event elsewhere: synaptic operations of a layer = its ANN MACs times the fraction of its
inputs that are non-zero, summed over the T steps (border effects of padding are ignored). SRP
also pays the synaptic operations of its tau pre-simulation steps (COS's rho steps are the first
rho of its T: cos_jax computes them once).
"""

import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from cos_jax import (
  config_checks,
  input_pipeline,
  interrupts,
  parallel,
  report_rendering,
  run_state,
  sources,
  torch_import,
  xla,
)
from cos_jax import precision as precision_lib
from cos_jax import snn as snn_lib
from cos_jax import workdir as workdir_lib
from cos_jax.augment import EvalTransform

ENERGY_MAC_PJ = 4.6
ENERGY_AC_PJ = 0.9


@contextlib.contextmanager
def _progress_bar(label: str, total: int, first: int = 0):
  """`show(done)` draws a progress bar on stderr; `first` items were done before the block (a
  resumed run). Leaving the block by an error or a Ctrl-C ends the bar's line, so that their
  message starts a line of its own."""
  started = time.time()
  line_open = False

  def show(done: int) -> None:
    nonlocal line_open
    rate = (done - first) / max(time.time() - started, 1e-9)
    width = 30
    filled = int(width * done / total)
    eta = (total - done) / rate if rate else 0
    sys.stderr.write(
      f'\r{label} [{"#" * filled}{"." * (width - filled)}] {done}/{total} '
      f'{rate:.0f} images/s ETA {eta:.0f} s '
    )
    line_open = done != total
    if not line_open:
      sys.stderr.write('\n')
    sys.stderr.flush()

  try:
    yield show
  except BaseException:
    if line_open:
      sys.stderr.write('\n')
    raise


def _methods(conversion) -> list[tuple[str, str, int]]:
  """(report name, method, pre-simulation steps) of every SNN method the report runs."""
  return (
    [('qcfs', 'qcfs', 0)]
    + [(f'cos_rho{rho}', 'cos', rho) for rho in conversion.rhos]
    + [(f'srp_tau{tau}', 'srp', tau) for tau in conversion.srp_taus]
  )


def _simulate(network, images, conversion, method: str, steps: int):
  """[max_T, B, C] logits and the statistics of one method on one batch."""
  common = dict(
    chunk=conversion.chunk or None,
    statistics_T=conversion.statistics_T,
    precision=conversion.precision,
  )
  if method == 'srp':
    logits, _, stats = snn_lib.srp_simulate(network, images, conversion.max_T, tau=steps, **common)
  else:
    logits, _, stats = snn_lib.calibrate_and_simulate(
      network, images, conversion.max_T, rho=steps, rounds=conversion.rounds, **common
    )
  return logits, stats


class _Progress:
  """The conversion's running totals, saved after every batch to a file in the workdir so that an
  interrupted report resumes at the next batch; the totals are float64 and integers written
  exactly (JSON keeps every float64), so a resumed report equals an uninterrupted one.

  The file names a fingerprint of what the totals depend on (the variables, the conversion and
  data settings); a file from other variables or settings is ignored and replaced.
  """

  def __init__(self, path: Path | None, fingerprint: str):
    self.path, self.fingerprint = path, fingerprint

  def load(self) -> dict | None:
    if self.path is None or not self.path.is_file():
      return None
    try:
      saved = json.loads(self.path.read_text())
    except json.JSONDecodeError:  # not ours, or damaged: start over
      return None
    if saved.get('fingerprint') != self.fingerprint:
      return None
    saved['correct'] = {k: np.asarray(v, np.int64) for k, v in saved['correct'].items()}
    saved['layer_stats'] = {
      name: {
        layer: {k: np.asarray(v, np.float64) for k, v in values.items()}
        for layer, values in layers.items()
      }
      for name, layers in saved['layer_stats'].items()
    }
    return saved

  def save(self, batches_done: int, ann_correct: int, correct: dict, layer_stats: dict) -> None:
    if self.path is None or jax.process_index():
      return
    state = {
      'fingerprint': self.fingerprint,
      'batches_done': batches_done,
      'ann_correct': ann_correct,
      'correct': {k: v.tolist() for k, v in correct.items()},
      'layer_stats': {
        name: {
          layer: {k: v.tolist() for k, v in values.items()} for layer, values in layers.items()
        }
        for name, layers in layer_stats.items()
      },
    }
    temporary = self.path.with_name(self.path.name + '.tmp')
    temporary.write_text(json.dumps(state))
    temporary.replace(self.path)

  def remove(self) -> None:
    if self.path is not None and not jax.process_index():
      self.path.unlink(missing_ok=True)


def _fingerprint(config, variables) -> str:
  """What the conversion's totals depend on besides the code: the variables (their SHA-256), the
  conversion settings and the test data's source and preprocessing."""
  settings = {
    key: config[key]
    for key in (
      'arch',
      'levels',
      'dataset',
      'data_source',
      'data_dir',
      'input_shape',
      'mean',
      'std',
      'preprocess',
    )
  }
  settings['conversion'] = config.conversion.to_dict()
  text = json.dumps(settings, sort_keys=True, default=str) + workdir_lib.state_digest(variables)
  return hashlib.sha256(text.encode()).hexdigest()


@xla.jit(static_argnames='model')
def _ann_correct(model, variables, images, labels):
  """The number of images the ANN classifies correctly (on the device: across processes, each
  holds a share of the batch, and the count is every process's)."""
  return (model.apply(variables, images, train=False).argmax(-1) == labels).sum()


@xla.jit
def _correct_by_T(logits, labels):
  """[T] numbers of images whose prediction after 1..T steps is correct, from [T, B, C] logits."""
  return (logits.cumsum(0).argmax(-1) == labels[None]).sum(1)


def evaluate_conversion(
  config, model, variables, split: sources.Split, progress_path: Path | None = None
) -> dict:
  """Runs the ANN and every SNN method over the split and returns the raw report dict.

  With `progress_path`, the running totals are saved there after every batch and an interrupted
  evaluation of the same variables and settings resumes from them (the file is removed at the
  end).
  """
  conversion = config.conversion
  max_T = conversion.max_T
  statistics_T = conversion.statistics_T
  split = sources.subset(split, conversion.num_examples)
  n = len(split)
  network = snn_lib.convert(model, variables)
  mesh = parallel.data_mesh()
  methods = _methods(conversion)
  progress = _Progress(progress_path, _fingerprint(config, variables))
  saved = progress.load()
  if saved:
    batches_done, ann_correct = saved['batches_done'], saved['ann_correct']
    correct, layer_stats = saved['correct'], saved['layer_stats']
    print(
      f'Resumed the conversion report after {batches_done * conversion.batch_size} of {n} '
      f'images ({progress_path}).',
      flush=True,
    )
  else:
    batches_done, ann_correct = 0, 0
    correct = {name: np.zeros(max_T, np.int64) for name, _, _ in methods}
    layer_stats = {name: {} for name, _, _ in methods}
  batches = input_pipeline.eval_batches(
    split,
    conversion.batch_size,
    EvalTransform.from_config(config),
    threads=config.data_threads,
    process_index=0,
    process_count=1,  # whole batches in every process
    start_batch=batches_done,
  )
  starts = range(batches_done * conversion.batch_size, n, conversion.batch_size)
  with _progress_bar('converting', n, first=starts.start) as show_progress:
    for batch_index, (start, (images, labels, real)) in enumerate(
      zip(starts, batches, strict=True), start=batches_done + 1
    ):
      interrupts.raise_if_requested()
      images, labels = input_pipeline.normalise(images[real], config.mean, config.std), labels[real]
      if len(images) % jax.device_count() == 0:  # data-parallel; a ragged last batch runs whole
        # in every process, on one device
        images, labels = parallel.shard_global_batch(mesh, images, labels)
      with precision_lib.matmul_precision(conversion.precision):
        ann_correct += int(_ann_correct(model, variables, images, labels))
      for name, method, steps in methods:
        logits, stats = _simulate(network, images, conversion, method, steps)
        correct[name] += np.asarray(_correct_by_T(logits, labels))
        for layer, values in jax.device_get(stats).items():
          totals = layer_stats[name].setdefault(layer, {})
          for key, value in values.items():
            totals[key] = totals.get(key, 0) + np.asarray(value, np.float64)
      progress.save(batch_index, ann_correct, correct, layer_stats)
      show_progress(min(start + conversion.batch_size, n))
  progress.remove()

  neurons = snn_lib.neuron_counts(network)
  costs = snn_lib.linear_layer_costs(model)
  first_linear = next(iter(costs))
  ann_macs = sum(c['macs'] for c in costs.values())
  report = {
    'examples': n,
    'max_T': max_T,
    'statistics_T': statistics_T,
    'rounds': conversion.rounds,
    'precision': conversion.precision,
    'ann_accuracy': ann_correct / n,
    'energy_constants_pj': {'mac': ENERGY_MAC_PJ, 'ac': ENERGY_AC_PJ},
    'ann_macs_per_image': ann_macs,
    'ann_energy_uj_per_image': ann_macs * ENERGY_MAC_PJ * 1e-6,
    'offset_spike_bins': list(snn_lib.OFFSET_SPIKE_BINS),
    'methods': {},
  }
  for name, method, steps in methods:
    per_layer = {}
    synops = presimulation_synops = 0.0
    for layer, totals in layer_stats[name].items():
      if 'psi_histogram' in totals:
        histogram = totals['psi_histogram']
        per_layer.setdefault(layer, {}).update(
          offset_spike_shares=(histogram / histogram.sum()).tolist(),
          firing_rate=float(totals['spikes'] / (neurons[layer] * n * statistics_T)),
        )
      else:
        per_input = 0.0 if layer == first_linear else costs[layer]['macs'] / costs[layer]['inputs']
        layer_synops = per_input * totals['nonzero_inputs'] / n
        synops += layer_synops
        values = dict(
          synaptic_ops_per_image=float(layer_synops), ann_macs_per_image=costs[layer]['macs']
        )
        if 'presimulation_nonzero_inputs' in totals:
          values['presimulation_synaptic_ops_per_image'] = float(
            per_input * totals['presimulation_nonzero_inputs'] / n
          )
          presimulation_synops += values['presimulation_synaptic_ops_per_image']
        per_layer.setdefault(layer, {}).update(values)
    first_macs = costs[first_linear]['macs']
    energy = first_macs * ENERGY_MAC_PJ + (synops + presimulation_synops) * ENERGY_AC_PJ
    accuracy = correct[name] / n
    if not ((accuracy >= 0) & (accuracy <= 1)).all():
      raise AssertionError(f'{name}: accuracies outside 0-100 %: {accuracy.tolist()}')
    report['methods'][name] = {
      'method': method,
      **({'tau': steps} if method == 'srp' else {'rho': steps}),
      'accuracy_by_T': accuracy.tolist(),
      'latency_by_T': [steps + t for t in range(1, max_T + 1)],
      'layers': per_layer,
      'synaptic_ops_per_image': synops,
      'presimulation_synaptic_ops_per_image': presimulation_synops,
      'snn_energy_uj_per_image': energy * 1e-6,
    }
  return report


def write_report(
  config, workdir, model, variables, split: sources.Split, title: str | None = None
) -> dict:
  """Evaluates the conversion and writes report.json, report.md and the plots into workdir."""
  workdir = Path(workdir)
  report = evaluate_conversion(config, model, variables, split, workdir / 'report_progress.json')
  report['config'] = {
    'arch': config.arch,
    'levels': config.levels,
    'dataset': config.dataset,
    'rhos': list(config.conversion.rhos),
    'srp_taus': list(config.conversion.srp_taus),
    'chunk': config.conversion.chunk,
  }
  methods = 'QCFS, COS and SRP' if config.conversion.srp_taus else 'QCFS and COS'
  title = title or f'{config.arch} (L = {config.levels}) on {config.dataset}: ANN, {methods}'
  markdown = report_rendering.to_markdown(report, title)
  print(markdown, flush=True)
  if jax.process_index():
    return report  # one writer on a shared workdir
  (workdir / 'report.json').write_text(json.dumps(report, indent=1))
  (workdir / 'report.md').write_text(markdown)
  report_rendering.plot(report, workdir / 'report')
  return report


def convert_and_report(
  workdir,
  config: ml_collections.ConfigDict | None = None,
  torch_checkpoint: str | None = None,
  data_dir: str | None = None,
) -> dict:
  """convert.py: the report of a run's checkpoint, or of an imported PyTorch checkpoint.

  Args:
    workdir: the run's folder; the report is written there.
    config: the config to convert with; None reads the run's config.json. The workdir is held
      as train.py holds it: beside a live train.py on it, the conversion is refused. A config that
      describes another network or run than the checkpoint's is refused
      (`workdir.check_conversion_config`).
    torch_checkpoint: a state_dict of the reference PyTorch code (.pth or .npz) to convert
      instead of the workdir's checkpoint.
    data_dir: where the test data lie, in place of the config's `data_dir` (a run's relative
      one is read from the current directory).

  Returns:
    The report, as written to report.json.
  """
  workdir = Path(workdir).expanduser()
  if config is None:
    config = workdir_lib.read_config(workdir)
    if config is None:
      raise FileNotFoundError(
        f'{workdir / "config.json"} not found: pass --config=configs/<name>.py.'
      )
  elif not torch_checkpoint:
    workdir_lib.check_conversion_config(workdir, config)
  if data_dir:
    config.data_dir = data_dir
  config_checks.check_config(config, training=False)
  if torch_checkpoint:
    workdir.mkdir(parents=True, exist_ok=True)
  elif not workdir.is_dir():
    raise FileNotFoundError(
      f'No run at {workdir}: train first with python train.py --config=... --workdir={workdir}.'
    )
  with workdir_lib.exclusive(workdir):  # not beside a train.py still writing checkpoints
    if torch_checkpoint:
      model, variables = torch_import.load_torch_checkpoint(
        torch_checkpoint, **run_state.model_arguments(config)
      )
    else:
      model, variables = run_state.restore_variables(config, workdir)
    test_split = sources.load(config, preload=False).test
    return write_report(config, workdir, model, variables, test_split)
