"""Trains configs/test.py in argv[1] and, once the checkpoint of step 10 is being written, prints
'saving' and waits there for the test's Ctrl-C."""

import sys
import time

import orbax.checkpoint as ocp

from configs import test as test_config
from cos_jax import training

real_save = ocp.CheckpointManager.save


def save_then_wait(self, step, *args, **kwargs):
  saved = real_save(self, step, *args, **kwargs)
  if step == 10:
    print('saving', flush=True)
    for _ in range(6000):  # not one sleep(600): a SIGINT that lands on another thread
      time.sleep(0.1)  # (grain's, orbax's) is raised only when this one runs Python
  return saved


ocp.CheckpointManager.save = save_then_wait
config = test_config.get_config()
config.conversion.enabled = False
training.train_and_evaluate(config, sys.argv[1])
