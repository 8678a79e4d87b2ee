"""Runs convert.py on the workdir argv[1] with a conversion that is interrupted at once."""

import runpy
import sys

from cos_jax import conversion_report


def interrupted(*args):
  raise KeyboardInterrupt


conversion_report.convert_and_report = interrupted
sys.argv = ['convert.py', '--workdir=' + sys.argv[1]]
runpy.run_path('convert.py', run_name='__main__')
