"""cos_jax.interrupts: a Ctrl-C recorded as it lands, so that one swallowed by a finaliser still
stops the run (the whole path through convert.py: tests/test_convert.py)."""

import os
import signal
import sys
import time

import pytest

from cos_jax import interrupts


class _SwallowsACtrlC:
  """A finaliser that the Ctrl-C lands in: Python prints "Exception ignored" and goes on."""

  def __del__(self):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):
      time.sleep(0.01)


def test_a_ctrl_c_swallowed_by_a_finaliser_is_raised_at_the_next_check(monkeypatch):
  swallowed = []
  monkeypatch.setattr(sys, 'unraisablehook', swallowed.append)
  with interrupts.remembered():
    _SwallowsACtrlC()  # deleted at once
    assert [type(s.exc_value) for s in swallowed] == [KeyboardInterrupt]
    assert interrupts.requested()
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_requested()


def test_a_raised_ctrl_c_is_recorded_and_forgotten_after_the_block():
  with interrupts.remembered():
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
    assert interrupts.requested()
  assert not interrupts.requested()
  interrupts.raise_if_requested()  # outside the block nothing is pending


def test_the_handler_before_is_put_back():
  before = signal.getsignal(signal.SIGINT)
  with interrupts.remembered():
    assert signal.getsignal(signal.SIGINT) is not before
  assert signal.getsignal(signal.SIGINT) is before
