"""A Ctrl-C that is never lost.

Python raises KeyboardInterrupt wherever the main thread is when SIGINT lands. If that is inside
a finaliser (grain's iterator clean-up, any `__del__`), Python prints "Exception ignored" and
carries on, and the run ends as if nobody had pressed Ctrl-C. Inside `remembered()` (the scripts'
end handler, `cli.resumable_on_interrupt`) every SIGINT is also recorded, and the loops of
training, evaluation and the conversion report call `raise_if_requested` once per step or batch,
so a swallowed Ctrl-C stops the run at the next one. Outside `remembered()` (the library called
from a notebook) nothing is recorded and `raise_if_requested` never raises.
"""

import contextlib
import signal
import threading

_requested = threading.Event()


def _record_and_raise(signum, frame):
  del signum, frame
  _requested.set()
  raise KeyboardInterrupt


@contextlib.contextmanager
def remembered():
  """SIGINT raises KeyboardInterrupt as Python's own handler does, and is recorded for
  `requested` and `raise_if_requested`. Only the main thread can install a handler: elsewhere
  this does nothing."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  _requested.clear()
  previous = signal.signal(signal.SIGINT, _record_and_raise)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    _requested.clear()


def requested() -> bool:
  """Whether a Ctrl-C has landed inside `remembered()`, raised or swallowed."""
  return _requested.is_set()


def raise_if_requested() -> None:
  """KeyboardInterrupt if a Ctrl-C has landed, though its own KeyboardInterrupt was swallowed."""
  if _requested.is_set():
    raise KeyboardInterrupt
