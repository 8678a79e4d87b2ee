"""What every benchmark shares: timing, the machine's description, the JSON it writes."""

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax


def median_seconds(fn, repeats: int) -> float:
  """The median wall time of `fn()` over `repeats` runs, after one compile-and-warm-up run."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_bytes(lowered) -> int:
  """A lowered program's peak memory as XLA assigns its buffers: arguments, outputs and
  temporaries."""
  stats = lowered.compile().memory_analysis()
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes)


def machine() -> dict:
  cpu = 'unknown'
  if Path('/proc/cpuinfo').exists():
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        cpu = line.split(':', 1)[1].strip()
        break
  return {
    'cpu': cpu,
    'cores': os.cpu_count(),
    'platform': platform.platform(),
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'date': datetime.date.today().isoformat(),
  }


def write_result(path: str, **payload) -> None:
  """Writes the payload with the machine and the command line as JSON."""
  out = Path(path)
  out.parent.mkdir(parents=True, exist_ok=True)
  command = ' '.join(['python'] + sys.orig_argv[1:]).replace(str(Path.cwd()) + '/', '')
  out.write_text(json.dumps({'machine': machine(), 'command': command, **payload}, indent=1))
  print(f'wrote {out}')
