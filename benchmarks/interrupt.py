"""Seconds from Ctrl-C to exit of train.py, against an earlier commit of the code.

    python -m benchmarks.interrupt --baseline=18100e2 --repeats=3

train.py trains ResNet-20 (configs/cifar10_short.py) on synthetic CIFAR-shaped data; --wait
seconds after its first log line (step 50, past the compile) the benchmark sends SIGINT, as
Ctrl-C does, and times how long the process takes to exit. The baseline commit runs from a
temporary `git worktree`, both trees from this Python environment, alternately, --repeats times
each; the JSON keeps every time and the printout the medians. On a CPU the host outpaces the
device, so a loop that dispatches steps without waiting queues many of them, and the process can
only exit once XLA has run them all: 18100e2 is the last commit before the loop waited for each
previous step.
"""

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

CONFIG = """from configs import cifar10_short


def get_config():
  config = cifar10_short.get_config()
  config.update(data_source='synthetic', dataset='synthetic', log_every_steps=50,
                checkpoint_every_steps=100_000)
  config.synthetic_train_size = 12_800
  config.synthetic_test_size = 100
  config.conversion.enabled = False
  return config
"""
FIRST_LOG = 'step 50/'


def seconds_to_exit(code: Path, config: Path, workdir: Path, wait: float) -> float:
  """Starts train.py in `code`, interrupts it `wait` s after its first log line, times the exit."""
  process = subprocess.Popen(
    [sys.executable, 'train.py', f'--config={config}', f'--workdir={workdir}'],
    cwd=code,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
    # A shell's background job ignores SIGINT, and children inherit that: restore Ctrl-C.
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  for line in process.stdout:
    if line.startswith(FIRST_LOG):
      break
  else:
    raise RuntimeError(
      f'train.py in {code} exited (status {process.wait()}) before logging '
      f'{FIRST_LOG!r}; run it by hand with --config={config} to see why.'
    )
  time.sleep(wait)
  start = time.perf_counter()
  process.send_signal(signal.SIGINT)
  process.stdout.close()
  process.wait()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--baseline', default='18100e2', help='the commit to compare against')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument(
    '--wait', type=float, default=5.0, help='seconds between the first log line and SIGINT'
  )
  parser.add_argument('--out', default='docs/benchmarks/interrupt.json')
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    baseline = tmp / 'baseline'
    subprocess.run(
      ['git', 'worktree', 'add', '--detach', str(baseline), args.baseline],
      check=True,
      capture_output=True,
    )
    try:
      config = tmp / 'interrupt_config.py'
      config.write_text(CONFIG)
      trees = {args.baseline: baseline, 'current': Path.cwd()}
      times = {name: [] for name in trees}
      for repeat in range(args.repeats):
        for name, code in trees.items():
          times[name].append(
            seconds_to_exit(code, config, tmp / f'workdir_{name}_{repeat}', args.wait)
          )
          print(f'{name}: exited {times[name][-1]:.1f} s after SIGINT', flush=True)
    finally:
      subprocess.run(['git', 'worktree', 'remove', '--force', str(baseline)], check=True)

  medians = {name: statistics.median(t) for name, t in times.items()}
  print('| code | median seconds from SIGINT to exit |\n|---|---|')
  for name, median in medians.items():
    print(f'| {name} | {median:.1f} |')
  write_result(
    args.out, wait_seconds=args.wait, seconds_to_exit=times, median_seconds_to_exit=medians
  )


if __name__ == '__main__':
  main()
