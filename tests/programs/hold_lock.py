"""Holds the workdir argv[1] (prints 'locked') until killed."""

import sys
import time
from pathlib import Path

from cos_jax import workdir

with workdir.exclusive(Path(sys.argv[1])):
  print('locked', flush=True)
  time.sleep(600)
