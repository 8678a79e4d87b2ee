"""Trains configs/test.py in argv[1]; with argv[2] == 'stall' it stalls in step 8 (after the
checkpoint of step 5), printing 'stalled', for the test to kill it there."""

import sys
import time

from configs import test as test_config
from cos_jax import input_pipeline, training

real_batches = input_pipeline.train_batches


def stalling_batches(*args, **kwargs):
  for index, batch in enumerate(real_batches(*args, **kwargs)):
    if kwargs['start_step'] + index == 7 and sys.argv[2] == 'stall':
      print('stalled', flush=True)
      time.sleep(600)
    yield batch


input_pipeline.train_batches = stalling_batches
config = test_config.get_config()
config.conversion.enabled = False
training.train_and_evaluate(config, sys.argv[1])
