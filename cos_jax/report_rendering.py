"""The conversion report as people read it: markdown tables and two PNG plots, from the report
dict that `conversion_report.evaluate_conversion` returns."""

from pathlib import Path

import numpy as np

REPORTED_T = (1, 2, 4, 8, 16, 32, 64, 128)
"""The T columns of the accuracy table (those up to the report's max_T), and the latencies of
the equal-latency table."""


def presimulation_steps(method: dict) -> int:
  """rho for COS, tau for SRP, 0 for the plain conversion (reports before SRP hold only rho)."""
  return method.get('tau', method.get('rho', 0))


def _equal_latency(report: dict) -> list[str]:
  """The accuracy of every method at the same latency (pre-simulation + T steps), and how COS
  compares with SRP at each shared pre-simulation length, counted over every T."""
  methods = report['methods']
  max_T = report['max_T']
  latencies = [
    n for n in REPORTED_T if any(1 <= n - presimulation_steps(m) <= max_T for m in methods.values())
  ]
  lines = [
    '',
    '## Accuracy at equal latency (%)',
    '',
    'Latency = pre-simulation steps + T; a method whose pre-simulation alone is as long has no '
    'entry.',
    '',
    '| method | ' + ' | '.join(f'latency {n}' for n in latencies) + ' |',
    '|---|' + '---|' * len(latencies),
  ]
  for name, method in methods.items():
    cells = []
    for latency in latencies:
      t = latency - presimulation_steps(method)
      cells.append(f'{100 * method["accuracy_by_T"][t - 1]:.2f}' if 1 <= t <= max_T else '-')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  comparisons = []
  for name, method in methods.items():
    if method.get('method') != 'srp':
      continue
    cos_name = f'cos_rho{method["tau"]}'
    if cos_name not in methods:
      continue
    cos, srp = np.asarray(methods[cos_name]['accuracy_by_T']), np.asarray(method['accuracy_by_T'])
    comparisons.append(
      f'{cos_name} against {name} (the same latency at every T): COS above at '
      f'{int((cos > srp).sum())}, equal at {int((cos == srp).sum())} and below at '
      f'{int((cos < srp).sum())} of the {max_T} T.'
    )
  if comparisons:
    lines += [''] + comparisons
  return lines


def to_markdown(report: dict, title: str) -> str:
  """The report as markdown tables."""
  ts = [t for t in REPORTED_T if t <= report['max_T']]
  lines = [
    f'# {title}',
    '',
    f'{report["examples"]} test images; T is the number of simulated steps after the rho '
    '(COS) or tau (SRP) pre-simulation steps, so the latency is rho + T or tau + T; COS rounds '
    f'k = {report["rounds"]}.'
    + (  # reports written before the precision was recorded ran on CPUs, at full float32
      f' Convolutions and matrix products at precision {report["precision"]!r}.'
      if 'precision' in report
      else ''
    ),
    '',
    '## Accuracy (%)',
    '',
    '| method | rho or tau | ANN | ' + ' | '.join(f'T={t}' for t in ts) + ' |',
    '|---|---|---|' + '---|' * len(ts),
  ]
  for name, method in report['methods'].items():
    accuracy = method['accuracy_by_T']
    lines.append(
      f'| {name} | {presimulation_steps(method)} | {100 * report["ann_accuracy"]:.2f} | '
      + ' | '.join(f'{100 * accuracy[t - 1]:.2f}' for t in ts)
      + ' |'
    )
  lines += _equal_latency(report)
  bins = report['offset_spike_bins']
  labels = [f'psi<={bins[0]}'] + [f'psi={b:+d}' for b in bins[1:-1]] + [f'psi>=+{bins[-1]}']
  lines += [
    '',
    f'## Offset spikes per layer over T = {report["statistics_T"]} steps (share of neurons, %)',
    '',
    '| method | layer | ' + ' | '.join(labels) + ' | firing rate |',
    '|---|---|' + '---|' * (len(labels) + 1),
  ]
  for name, method in report['methods'].items():
    for layer, values in method['layers'].items():
      if 'offset_spike_shares' in values:
        shares = ' | '.join(f'{100 * s:.2f}' for s in values['offset_spike_shares'])
        lines.append(f'| {name} | {layer} | {shares} | {values["firing_rate"]:.4f} |')
  lines += [
    '',
    f'## Synaptic operations and energy per image over T = {report["statistics_T"]} steps',
    '',
    f'Energy: {report["energy_constants_pj"]["mac"]} pJ per MAC, '
    f'{report["energy_constants_pj"]["ac"]} pJ per accumulate (45 nm); the SNN pays MACs '
    "only in its first (analog-input) layer, once. SRP's energy includes its tau "
    "pre-simulation steps; COS's rho steps are the first rho of its T.",
    '',
    '| network | MACs (M) | synaptic ops (M) | pre-simulation synaptic ops (M) | energy (uJ) |',
    '|---|---|---|---|---|',
    f'| ANN | {report["ann_macs_per_image"] / 1e6:.2f} | - | - | '
    f'{report["ann_energy_uj_per_image"]:.2f} |',
  ]
  for name, method in report['methods'].items():
    presimulation = method.get('presimulation_synaptic_ops_per_image', 0.0)
    lines.append(
      f'| {name} | - | {method["synaptic_ops_per_image"] / 1e6:.2f} | '
      f'{presimulation / 1e6:.2f} | {method["snn_energy_uj_per_image"]:.2f} |'
    )
  return '\n'.join(lines) + '\n'


def plot(report: dict, path_prefix: Path) -> list[Path]:
  """Accuracy against T, and the offset-spike histogram (all layers pooled) of each method."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  ts = np.arange(1, report['max_T'] + 1)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.axhline(100 * report['ann_accuracy'], color='black', linestyle='--', label='ANN')
  for name, method in report['methods'].items():
    ax.plot(ts, 100 * np.asarray(method['accuracy_by_T']), marker='.', label=name)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('T (steps after the rho or tau pre-simulation steps)')
  ax.set_ylabel('test accuracy (%)')
  ax.legend()
  ax.grid(alpha=0.3)
  accuracy_path = path_prefix.with_name(path_prefix.name + '_accuracy.png')
  fig.tight_layout()
  fig.savefig(accuracy_path, dpi=120)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4))
  bins = np.asarray(report['offset_spike_bins'])
  width = 0.8 / len(report['methods'])
  for index, (name, method) in enumerate(report['methods'].items()):
    shares = np.mean(
      [v['offset_spike_shares'] for v in method['layers'].values() if 'offset_spike_shares' in v],
      axis=0,
    )
    ax.bar(
      bins + (index - (len(report['methods']) - 1) / 2) * width, 100 * shares, width, label=name
    )
  ax.set_xticks(bins, [f'<={bins[0]}'] + [f'{b:+d}' for b in bins[1:-1]] + [f'>=+{bins[-1]}'])
  ax.set_yscale('log')
  ax.set_xlabel('offset spike psi (actual - desired spikes)')
  ax.set_ylabel('share of neurons, mean over layers (%)')
  ax.set_title(f'offset spikes over T = {report["statistics_T"]} steps')
  ax.legend()
  histogram_path = path_prefix.with_name(path_prefix.name + '_offset_spikes.png')
  fig.tight_layout()
  fig.savefig(histogram_path, dpi=120)
  plt.close(fig)
  return [accuracy_path, histogram_path]
