"""Trains configs/test.py in argv[1]; once the checkpoint of step 10 is being written it prints
'saving', sleeps argv[2] seconds (so that the test's Ctrl-C lands at another moment of the save
in each trial) and writes it, leaving behind a thread that never ends, as orbax's background
threads can after an interrupted or failed save, and then waits for the Ctrl-C. Run through
train.py's handler (`cli.resumable_on_interrupt`), as train.py runs."""

import sys
import threading
import time

import orbax.checkpoint as ocp

from configs import test as test_config
from cos_jax import cli, training

real_save = ocp.CheckpointManager.save


def save_then_wait(self, step, *args, **kwargs):
  if step != 10:
    return real_save(self, step, *args, **kwargs)
  print('saving', flush=True)
  time.sleep(float(sys.argv[2]))
  threading.Thread(target=threading.Event().wait, name='stuck-like-orbax').start()
  saved = real_save(self, step, *args, **kwargs)
  for _ in range(6000):  # not one sleep(600): a SIGINT that lands on another thread
    time.sleep(0.1)  # (grain's, orbax's) is raised only when this one runs Python
  return saved


ocp.CheckpointManager.save = save_then_wait
config = test_config.get_config()
config.conversion.enabled = False
with cli.resumable_on_interrupt(sys.argv[1], 'training from its newest checkpoint'):
  training.train_and_evaluate(config, sys.argv[1])
