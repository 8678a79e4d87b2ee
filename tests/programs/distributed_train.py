"""Runs train.py with the given flags; with STALL_AT_STEP=k in the environment this process
stalls before step k + 1 (printing 'stalled'), for the test to kill it there."""

import os
import runpy
import sys
import time

from cos_jax import input_pipeline

real_batches = input_pipeline.train_batches


def stalling_batches(*args, **kwargs):
  for index, batch in enumerate(real_batches(*args, **kwargs)):
    if kwargs['start_step'] + index == int(os.environ['STALL_AT_STEP']):
      print('stalled', flush=True)
      time.sleep(600)
    yield batch


if os.environ.get('STALL_AT_STEP'):
  input_pipeline.train_batches = stalling_batches
sys.argv = ['train.py'] + sys.argv[1:]
runpy.run_path('train.py', run_name='__main__')
