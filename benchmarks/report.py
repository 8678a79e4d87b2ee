"""Writes docs/benchmarks/README.md from the JSON results of the benchmark scripts.

python -m benchmarks.report
"""

import json
from pathlib import Path

RESULTS = Path('docs/benchmarks')


def _load(name: str) -> dict:
  return json.loads((RESULTS / name).read_text())


def _cost_section(cost: dict) -> list[str]:
  lines = [
    '## The cost of spiking against the ANN',
    '',
    f'`{cost["command"]}` ([`snn_cost.json`](snn_cost.json)): random weights with every '
    'threshold at 2, CIFAR shapes, the fused `calibrate_and_simulate` (with rho = 4 the '
    'time includes calibration).',
    '',
    '| model | batch | ANN images/s |',
    '|---|---|---|',
  ]
  for r in cost['results']:
    for batch, v in r['ann'].items():
      lines.append(f'| {r["arch"]} | {batch} | {v["images_per_second"]:.1f} |')
  lines += [
    '',
    'SNN at batch 50: SNN time / (max(T, rho) x ANN forward time), where 1 is the cost '
    'of max(T, rho) ANN forwards, and in brackets images/s:',
    '',
    '| model | rho | T=1 | T=2 | T=4 | T=8 | T=16 | T=32 |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for r in cost['results']:
    for rho in (0, 4):
      row = [v for v in r['snn'] if v['rho'] == rho]
      lines.append(
        f'| {r["arch"]} | {rho} | '
        + ' | '.join(f'{v["ratio_to_ann_bound"]:.2f} ({v["images_per_second"]:.1f})' for v in row)
        + ' |'
      )
  vgg = next(r for r in cost['results'] if r['arch'] == 'vgg16')
  target = next(v for v in vgg['snn'] if v['rho'] == 4 and v['T'] == 8)['ratio_to_ann_bound']
  lines += [
    '',
    f'**Target, VGG-16 at T = 8, rho = 4, batch 50: at most 1.15. Measured: '
    f'{target:.2f}.** Every chunk runs its layers over all of its steps at once (large '
    'matrix products), the image current is computed once per chunk, the neuron scans are '
    'unrolled (rolled scans were 2x slower on CPU) and calibration is the first chunk of '
    'the run. ResNet-20 sits 20-40 % above the bound: its convolutions are small, so the '
    'element-wise neuron work (threshold, reset, COS pre-simulation) weighs more.',
    '',
  ]
  return lines


def step_table(steps: list[dict]) -> list[str]:
  """benchmarks.train_step's step measurements as a Markdown table (its printout and the report)."""
  lines = [
    '| model | step images/s | forward images/s | step / forward | plain `jax.jit` step '
    'images/s | PyTorch step images/s | PyTorch time / cos_jax time |',
    '|---|---|---|---|---|---|---|',
  ]
  for r in steps:
    cells = [
      r.get('plain_jit_step_images_per_second'),
      r.get('torch_step_images_per_second'),
      r.get('torch_over_cos_jax'),
    ]
    plain, torch, ratio = ('-' if v is None else f'{v:.2f}' for v in cells)
    lines.append(
      f'| {r["arch"]} | {r["step_images_per_second"]:.1f} | '
      f'{r["forward_images_per_second"]:.1f} | {r["step_over_forward"]:.2f} | '
      f'{plain} | {torch} | {ratio} |'
    )
  return lines


def loop_table(loops: list[dict]) -> list[str]:
  """benchmarks.train_step's loop measurements as a Markdown table (its printout and the report)."""
  return [
    '| model | data | logged images/s | bare step images/s | logged / bare |',
    '|---|---|---|---|---|',
  ] + [
    f'| {loop["arch"]} | {loop["data"]} | {loop["logged_images_per_second"]:.1f} | '
    f'{loop["bare_step_images_per_second"]:.1f} | {loop["logged_over_bare"]:.2f} |'
    for loop in loops
  ]


def _train_step_section(result: dict, parts: dict) -> list[str]:
  machine = result['machine']
  rounds = len(result['steps'][0].get('rounds', [None])) if result['steps'] else 1
  lines = [
    '## The training step',
    '',
    f'`{result["command"]}` ([`train_step.json`](train_step.json), {machine["date"]}): '
    'batch 128, CIFAR shapes, random initialisation, the published optimizer. The step '
    'as train.py runs it, the eval forward on the same batch, the step compiled with '
    "XLA's default CPU options (plain `jax.jit`), and the PyTorch reference's step "
    '(`benchmarks/torch_reference.py`, torch '
    f'{"installed" if any("torch_step_seconds" in r for r in result["steps"]) else "absent"}'
    ', 2 threads), all in one run'
    + (f', each figure the median of {rounds} rounds' if rounds > 1 else '')
    + '.',
    '',
  ]
  lines += step_table(result['steps'])
  if result['loops']:
    lines += [
      '',
      "train.py's own loop with the full augmentation (crop, flip, AutoAugment, "
      'Cutout), the images/s it logs after the first (compiling) window, against the bare '
      'step timed just before and after it (the machine drifts), on synthetic CIFAR-shaped '
      'arrays and on JPEG files of the image folder named: decoded when each is read, and '
      'all decoded once at the start (`preload_images`):',
      '',
    ]
    lines += loop_table(result['loops'])
  lines += [
    '',
    f'The pieces at first-stage shapes, forward and backward: `{parts["command"]}` '
    f'([`train_step_parts.json`](train_step_parts.json), {parts["machine"]["date"]}).',
    '',
    '| shape | part | ms |',
    '|---|---|---|',
  ]
  lines += [
    f'| {"x".join(map(str, p["shape"]))} | {p["part"]} | {1000 * p["seconds"]:.2f} |'
    for p in parts['parts']
  ]
  lines += [
    '',
    "What was slow, found in XLA's profile of the whole step (`jax.profiler`, per-op "
    'thunk times) and in HLO dumps, then measured piece by piece (table above):',
    '',
    "- **XLA's YNNPACK fusions** (on by default in jaxlib 0.10's CPU backend) ran the "
    "weight gradients of 3x3 convolutions far slower than XLA's own kernels on this AVX2 "
    "CPU: they were the largest entries of the profile of ResNet-20's step. "
    '`cos_jax.xla.jit` compiles every cos_jax function with them off '
    '(a per-function compile option; other backends are untouched): the plain `jax.jit` '
    'column is the same code without it.',
    "- **Reductions.** XLA's CPU backend turns a large sum into a tree of "
    "`reduce-window`s. cos_jax's `BatchNorm` computes its training statistics and its "
    'closed-form gradient with matrix-vector products, equal to `nn.BatchNorm` up to the '
    'order of the sums.',
    '- **QCFS backward.** Automatic differentiation of the formula chains several scalings '
    'over the activations; the written-out gradient (`cos_jax/qcfs.py`) is one pass each '
    'for the input and the threshold, with the same values.',
    '- **Left as they are, measured:** dropout at rate 0 (Flax returns its input), the '
    'optimizer update (in place: train.py donates the train state), the tiny-map '
    "convolution's backward scatter (VGG-16's 2x2 stage, under 10 ms of a 3 s step), XLA's "
    'oneDNN option (within noise) and hand-made weight gradients (as im2col products or '
    "per-tap products, 3-4 times slower than XLA's).",
    '- **Step / forward.** The convolutions set a floor: a weight gradient costs 1.4-1.9 '
    'forward convolutions on XLA:CPU (its operands are transposed so that the batch is the '
    'contracted axis) and an input gradient 1-1.3, so the convolutions alone make a step '
    "3.4-4.2 forwards; ResNet-20's narrow layers (16-64 channels) sit at the top of that "
    'range. The 3.5 target is met by neither network on this CPU (table above).',
    "- **The machine's drift.** Three runs of the step measurement on 2026-11-30 within "
    'an hour (this command, and two earlier versions of its loop part) gave for ResNet-20 '
    'PyTorch time / cos_jax time 1.15, 1.12 and 0.90 (the table above is the last) and '
    'step / forward 5.45, 6.89 and 4.71; for VGG-16 1.60, 1.54, 1.47 and 3.54, 3.85, '
    '3.88. The loop rows move as much: an in-memory image folder costs the host exactly '
    'what synthetic arrays cost, yet its logged / bare was 0.89 in this run against 1.00 '
    'for synthetic data. Compare ratios over several runs.',
    '- **Decoding.** Reading and decoding a CIFAR JPEG costs the host 200-460 us per image '
    '(`benchmarks.input_pipeline`: 1,360 images/s end to end against 3,635 for the '
    'augmentation alone), 25-60 ms per ResNet-20 batch, taken from cores the step needs, '
    'every epoch again. `preload_images` (on in the CIFAR configs) decodes every image '
    'once when the run starts (CIFAR-10: 184 MB, 35 s here), so the loop then costs what '
    'it costs on synthetic data; the gain, a few per cent of a step, is below what these '
    'loop runs resolve.',
    '',
  ]
  return lines


def _memory_section(memory: dict) -> list[str]:
  ts = sorted({v['T'] for r in memory['results'] for v in r['memory']})
  lines = [
    '## Memory against T',
    '',
    f"`{memory['command']}` ([`snn_memory.json`](snn_memory.json)): XLA's buffer assignment "
    '(arguments + outputs + temporaries) of the compiled simulation, batch 50, default '
    'chunks (rho steps with COS, 8 without).',
    '',
    '| model | rho | ' + ' | '.join(f'T={t}' for t in ts) + ' | T=64 / T=8 |',
    '|---|---|' + '---|' * (len(ts) + 1),
  ]
  for r in memory['results']:
    for rho in (0, 4):
      row = {v['T']: v['peak_bytes'] / 2**20 for v in r['memory'] if v['rho'] == rho}
      lines.append(
        f'| {r["arch"]} | {rho} | '
        + ' | '.join(f'{row[t]:.0f} MB' for t in ts)
        + f' | {row[64] / row[8]:.2f} |'
      )
  lines += [
    '',
    '**Target: T = 64 at most 1.3 x T = 8.** See the table for which rows meet it. '
    'Memory does not grow with T: every row is flat from T = 16 to T = 128. Where T = 8 is '
    'lower, it is a single chunk, straight-line code that updates the membrane potentials '
    'in place; from T = 16 on the chunks run in a `lax.scan` whose carried potentials XLA '
    'keeps twice (ResNet-20 has 0.19 M neurons per image: 38 MB at batch 50). `chunk=4` '
    'halves the activations a chunk holds if memory is tight.',
    '',
  ]
  return lines


def _profile_section(profile: dict) -> list[str]:
  lines = [
    '## XLA slow paths on CPU: per-layer profile of VGG-16',
    '',
    f'`{profile["command"]}` ([`layer_profile.json`](layer_profile.json)): each distinct '
    'layer of VGG-16 alone, batch 50; GFLOP/s counts the nominal 3x3 convolution.',
    '',
    '| layer | implementation | ms | GFLOP/s |',
    '|---|---|---|---|',
  ]
  for r in profile['rows']:
    lines.append(
      f'| {r["layer"]} | {r["implementation"]} | {1000 * r["seconds"]:.2f} | '
      f'{r["gflops_per_second"]:.1f} |'
    )
  lines += [
    '',
    'Every convolution runs at 80-115 GFLOP/s except the last stage on 2x2 maps, at '
    'about 1 GFLOP/s: those three took 2.5 s of a batch, several times the rest of the '
    'network. `cos_jax.layers.Conv` computes a convolution whose map has no more positions '
    'than its kernel has taps as one matrix product with a weight matrix unrolled from the '
    'kernel (exact, same parameters; `tests/test_layers.py` checks it bit for bit against '
    '`nn.Conv`), about 100 times faster there; elsewhere it is `nn.Conv`. Pooling and '
    'dense layers show no slow path; the first convolution (3 input channels) is slow per '
    'FLOP but runs once per chunk.',
    '',
  ]
  return lines


def _pipeline_section(pipeline: dict) -> list[str]:
  lines = [
    '## Input pipeline against the training step',
    '',
    f'`{pipeline["command"]}` ([`input_pipeline.json`](input_pipeline.json)), '
    f'{pipeline["machine"]["date"]}. Each stage of the CIFAR recipe per image on one '
    'thread:',
    '',
    '| stage | images/s |',
    '|---|---|',
  ]
  lines += [f'| {r["stage"]} | {r["images_per_second"]:.0f} |' for r in pipeline['stages']]
  lines += [
    '',
    "AutoAugment's table operations (autocontrast, equalize, solarize, posterize, "
    "invert) run in NumPy, equal to PIL's (`tests/test_augment.py`): PIL builds their "
    'tables in Python for every image, and with them the whole recipe ran at 1,812 '
    'images/s in this benchmark (2026-11-30, commit f735ed0).',
  ]
  lines += [
    '',
    '`input_pipeline.train_batches` end to end (grain; threads in the training process, or '
    'worker processes):',
    '',
    '| data | recipe | threads | worker processes | images/s |',
    '|---|---|---|---|---|',
  ]
  lines += [
    f'| {r["data"]} | {r["recipe"]} | {r["threads"]} | {r["workers"]} | '
    f'{r["images_per_second"]:.0f} |'
    for r in pipeline['pipelines']
  ]
  lines += [
    '',
    'Peak resident memory of a process streaming 3 epochs of a JPEG folder (ImageNet '
    'recipe, batches of 50): images are read one file per example, nothing is decoded '
    'ahead, so it does not grow with the data set.',
    '',
    '| images in the folder | peak RSS (MB) |',
    '|---|---|',
  ]
  lines += [f'| {r["images"]} | {r["peak_rss_mb"]:.0f} |' for r in pipeline['memory']]
  return lines + ['']


def _interrupt_section(interrupt: dict) -> list[str]:
  medians = interrupt['median_seconds_to_exit']
  lines = [
    '## Ctrl-C',
    '',
    f'`{interrupt["command"]}` ([`interrupt.json`](interrupt.json)), '
    f'{interrupt["machine"]["date"]}: train.py on ResNet-20 and synthetic data, SIGINT '
    f'{interrupt["wait_seconds"]:g} s after the first log line (step 50), seconds until '
    'the process exits, median of the runs in the JSON; the baseline commit runs from a '
    'temporary git worktree.',
    '',
    '| code | seconds from SIGINT to exit |',
    '|---|---|',
  ]
  lines += [f'| {name} | {median:.1f} |' for name, median in medians.items()]
  lines += [
    '',
    'The host outpaces a CPU device, so a loop that never waits queues steps; XLA '
    'runs every queued step before the process can exit (py-spy: the PjRt CPU client '
    'joining its thread pool). Since 19270c9 each step waits for the one before it: one '
    'step stays queued behind the running one and the device is never idle.',
    '',
  ]
  return lines


def _srp_section(result: dict) -> list[str]:
  """SRP against COS at the same latency, on the machine the JSON names."""
  machine = result['machine']
  ratios = [v['srp_over_cos'] for r in result['results'] for v in r['rows']]
  lines = [
    '## SRP against COS at the same latency',
    '',
    f'`{result["command"]}` ([`srp_cost.json`](srp_cost.json)), {machine["cpu"]}, '
    f'{machine["cores"]} cores, {machine["date"]}: the fused `calibrate_and_simulate` (rho = p) '
    'and `srp_simulate` (tau = p), random weights with every threshold at 2. Both answer at '
    'latency p + T; COS does max(T, p) steps of work, SRP p + T.',
    '',
    '| model | batch | p | T | latency | COS s | SRP s | SRP / COS | steps of work, COS : SRP |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in result['results']:
    for v in r['rows']:
      lines.append(
        f'| {r["arch"]} | {r["batch"]} | {r["presimulation"]} | {v["T"]} | {v["latency"]} | '
        f'{v["cos_seconds"]:.3f} | {v["srp_seconds"]:.3f} | {v["srp_over_cos"]:.2f} | '
        f'{v["cos_steps"]} : {v["srp_steps"]} |'
      )
  lines += [
    '',
    f'SRP takes {min(ratios):.2f} to {max(ratios):.2f} times as long as COS at the same '
    'latency. Peak memory of its compiled run (arguments, outputs, temporaries) against T:',
    '',
    '| model | ' + ' | '.join(f'T={v["T"]}' for v in result['results'][0]['memory']) + ' |',
    '|---|' + '---|' * len(result['results'][0]['memory']),
  ]
  for r in result['results']:
    lines.append(
      f'| {r["arch"]} | '
      + ' | '.join(f'{v["peak_bytes"] / 2**20:.1f} MB' for v in r['memory'])
      + ' |'
    )
  return lines + ['']


def _accelerator_section() -> list[str]:
  """The device check's figures, or the command that makes them where none has run yet."""
  lines = [
    '## On an accelerator',
    '',
    '`python -m benchmarks.accelerator --out=docs/benchmarks/accelerator.json` (under 8 minutes '
    'on one GPU): backend and device kind, equal output rows against the reference float64 '
    'outputs at each precision, the training step per model, batch and dtype, fused COS '
    'against max(T, rho) ANN forwards, the input pipeline with worker processes, peak device '
    'memory.',
    '',
  ]
  if not (RESULTS / 'accelerator.json').exists():
    return lines + [
      'Not run yet: no session so far has had a machine with an accelerator. The test suite '
      'runs the script with `--tiny` on the CPU.',
      '',
    ]
  result = _load('accelerator.json')
  device = result['device']
  lines += [
    f'{device["device_kind"]} ({device["backend"]}, {device["device_count"]} devices), '
    f'{result["machine"]["date"]}, `{result["command"]}`.',
    '',
    '| dtype | precision | equal rows, plain | equal rows, COS |',
    '|---|---|---|---|',
  ]
  lines += [
    f'| {r["dtype"]} | {r["precision"]} | {100 * r["equal_rows_rho0"]:.1f} % | '
    f'{100 * r.get("equal_rows_rho4", float("nan")):.1f} % |'
    for r in result['exactness']
  ]
  lines += ['', '| model | batch | dtype | training images/s |', '|---|---|---|---|']
  lines += [
    f'| {r["arch"]} | {r["batch"]} | {r["dtype"]} | {r["images_per_second"]:.0f} |'
    for r in result['training_step']
  ]
  lines += ['', '| model | batch | COS images/s (rho 4, T 8) | / (8 ANN forwards) |']
  lines += ['|---|---|---|---|']
  lines += [
    f'| {r["arch"]} | {r["batch"]} | {r["images_per_second"]:.0f} | {r["ratio_to_ann_bound"]:.2f} |'
    for r in result['fused_cos']
  ]
  lines += ['', '| worker processes | pipeline images/s |', '|---|---|']
  lines += [f'| {r["workers"]} | {r["images_per_second"]:.0f} |' for r in result['input_pipeline']]
  lines += ['', f'Peak device memory: {result["peak_memory_bytes"]} bytes.', '']
  return lines


def main():
  cost = _load('snn_cost.json')
  machine = cost['machine']
  lines = [
    '# Benchmarks',
    '',
    f'Machine: {machine["cpu"]}, {machine["cores"]} cores, no accelerator, JAX '
    f'{machine["jax"]} ({machine["backend"]}), {machine["date"]}. The machine is shared '
    '(and trained a network during these runs): absolute speeds are noisy; every ratio '
    'compares times from one process; times are medians of repeated runs after a warm-up. '
    'Regenerate this page with `python -m benchmarks.report`.',
    '',
  ]
  lines += _train_step_section(_load('train_step.json'), _load('train_step_parts.json'))
  lines += _cost_section(cost)
  lines += _memory_section(_load('snn_memory.json'))
  lines += _srp_section(_load('srp_cost.json'))
  lines += _profile_section(_load('layer_profile.json'))
  lines += _pipeline_section(_load('input_pipeline.json'))
  lines += _interrupt_section(_load('interrupt.json'))
  lines += _accelerator_section()
  (RESULTS / 'README.md').write_text('\n'.join(lines))


if __name__ == '__main__':
  main()
