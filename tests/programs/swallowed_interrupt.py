"""Runs convert.py on the finished workdir argv[1] with a Ctrl-C that lands, after the report's
first batch, inside a finaliser, as it can inside grain's iterator clean-up: Python prints
"Exception ignored" and goes on. The report must stop at the next batch all the same."""

import os
import runpy
import signal
import sys
import time

from cos_jax import input_pipeline


class CleanUpThatCatchesTheCtrlC:
  def __del__(self):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):  # the handler runs, and raises in here, at the next bytecode
      time.sleep(0.01)


real_eval_batches = input_pipeline.eval_batches


def eval_batches_with_a_swallowing_clean_up(*args, **kwargs):
  for index, batch in enumerate(real_eval_batches(*args, **kwargs)):
    yield batch
    if index == 0:
      CleanUpThatCatchesTheCtrlC()  # deleted at once: __del__ runs, its interrupt is swallowed
      print('swallowed', flush=True)


input_pipeline.eval_batches = eval_batches_with_a_swallowing_clean_up
sys.argv = ['convert.py', '--workdir=' + sys.argv[1]]
runpy.run_path('convert.py', run_name='__main__')
