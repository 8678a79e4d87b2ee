"""What train.py and convert.py share on the command line: the flags of a run over several
processes, flag parsing that turns a mistyped config override into one flag error, and an end
that comes promptly: a Ctrl-C in one line saying how to resume, a failed write in one line
naming the file and the system's error."""

import contextlib
import logging
import os
import re
import sys
import threading
import time
import traceback

import jax
from absl import app, flags

from cos_jax import interrupts

flags.DEFINE_bool(
  'distributed',
  False,
  'Call jax.distributed.initialize() first: one process per host (or per CPU process), each '
  'running this same command. Without the three flags below JAX detects the cluster (Cloud '
  'TPU, SLURM, ...).',
)
flags.DEFINE_string(
  'coordinator_address', None, 'With --distributed: host:port of process 0, e.g. 10.0.0.1:1234.'
)
flags.DEFINE_integer('num_processes', None, 'With --distributed: the number of processes.')
flags.DEFINE_integer('process_id', None, 'With --distributed: this process, 0..num_processes-1.')
flags.DEFINE_integer(
  'heartbeat_timeout',
  100,
  'With --distributed: seconds after which a process that stopped answering is taken for dead '
  "and the others end with an error (JAX's default, 100).",
)

INITIALIZATION_TIMEOUT_S = 300
"""How long a process waits for the others to join before it fails with a message."""


def check_workdir(workdir: str) -> None:
  """--workdir must name a folder: an empty one would put the run in the current directory."""
  if not workdir.strip():
    raise app.UsageError('--workdir is empty: name the folder of the run, e.g. --workdir=runs/a.')


def initialize_distributed() -> None:
  """jax.distributed.initialize() with the flags' values, when --distributed is given.

  Cross-process collectives of the CPU backend go over gloo (JAX's CPU default has none; the
  setting does not touch GPU or TPU backends).
  """
  named = flags.FLAGS
  if not named.distributed:
    given = [
      f
      for f in ('coordinator_address', 'num_processes', 'process_id', 'heartbeat_timeout')
      if named[f].present
    ]
    if given:
      raise app.UsageError(f'--{given[0]} needs --distributed.')
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=named.coordinator_address,
    num_processes=named.num_processes,
    process_id=named.process_id,
    initialization_timeout=INITIALIZATION_TIMEOUT_S,
    heartbeat_timeout_seconds=named.heartbeat_timeout,
  )


def _chain(error: BaseException):
  """The error and those it was raised from or while handling, outermost first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


_STORAGE_ERROR = re.compile(r'"(/[^"]+)": ([A-Z][^"\[\]]*?)\s*(?:\[|$)')
"""A file and the system's error as tensorstore words them (orbax writes arrays through it):
`...Failed to open: "/path/file": File name too long [tensorstore_spec=...`."""


def storage_failure(error: BaseException) -> tuple[str | None, str] | None:
  """(the file, the system's error) if a file could not be written or read, else None; the
  file is None where the system's error names none (a full disk's often does not)."""
  for cause in _chain(error):
    if isinstance(cause, OSError) and cause.strerror:
      return (None if cause.filename is None else str(cause.filename)), cause.strerror
  for cause in _chain(error):
    found = _STORAGE_ERROR.findall(str(cause))
    if found:
      return found[-1]
  return None


HOLD_S = 5.0
"""How long a report of an error that nobody raises is held back before it is shown. The
reports that follow a failed write come within milliseconds of it (within 50 ms in five
full-disk trials), and the run's one line replaces those that come before it."""


class _HeldErrorReports(logging.Filter):
  """Reports of errors that nobody raises, each held back for `HOLD_S`: the log records of a
  failed write (orbax logs each failing background thread with its traceback, hundreds of
  lines for one full disk) and every error Python cannot raise (`sys.unraisablehook`: the
  callbacks tensorstore makes into orbax's closed event loops after such a failure, "Event loop
  is closed", up to hundreds of them). A run that ends in the one line of a failed write or of
  an interruption drops what is held (`drop`), as that line says what they do; a run that ends
  any other way shows it at once (`release`), and a run that goes on shows each after HOLD_S.
  A Ctrl-C landing in a finaliser is never shown: `interrupts` has recorded it, and the run
  ends in the line of an interruption."""

  def __init__(self):
    super().__init__()
    self._held = []  # (when it is due, how to show it), oldest first
    self._lock = threading.Lock()
    self._timer = None
    self._ended = None  # 'released' or 'dropped'
    self._previous_hook = sys.unraisablehook

  def filter(self, record: logging.LogRecord) -> bool:
    held = getattr(record, 'cos_jax_held', None)  # every handler asks about the same record
    if held is not None:
      return not held
    logged_error = record.exc_info[1] if record.exc_info else None
    if record.levelno < logging.ERROR or not (
      (logged_error is not None and storage_failure(logged_error))
      or _STORAGE_ERROR.search(record.getMessage())
    ):
      return True

    def show():
      record.cos_jax_held = False
      logging.getLogger(record.name).handle(record)

    record.cos_jax_held = True
    if self._hold(show):
      return False
    del record.cos_jax_held
    return True

  def _hold_unraisable(self, unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and interrupts.requested():
      return  # recorded: the run ends in the line of an interruption
    if not self._hold(lambda: self._previous_hook(unraisable)):
      self._previous_hook(unraisable)

  def _hold(self, show) -> bool:
    """Whether `show` was held (or dropped); False once the run has ended otherwise."""
    with self._lock:
      if self._ended == 'released':
        return False
      if self._ended is None:
        self._held.append((time.monotonic() + HOLD_S, show))
        if self._timer is None:
          self._arm()
      return True

  def _arm(self) -> None:
    self._timer = threading.Timer(max(self._held[0][0] - time.monotonic(), 0), self._show_due)
    self._timer.daemon = True
    self._timer.start()

  def _show_due(self) -> None:
    with self._lock:  # shown under the lock: `drop` waits for them, so they precede the line
      self._timer = None
      if self._ended is not None:
        return
      while self._held and self._held[0][0] <= time.monotonic():
        self._held.pop(0)[1]()
      if self._held:
        self._arm()

  def _end(self, how: str) -> None:
    with self._lock:
      self._ended = how
      held, self._held = self._held, []
      if self._timer is not None:
        self._timer.cancel()
      if how == 'released':
        for _, show in held:
          show()

  def release(self) -> None:
    """Shows what is held, and from now on everything as it comes."""
    self._end('released')

  def drop(self) -> None:
    """Forgets what is held, and from now on everything: the run ends in its one line."""
    self._end('dropped')

  @contextlib.contextmanager
  def installed(self):
    """On every handler of the root logger, which absl's and asyncio's records reach, and as
    Python's hook for unraisable errors, until the process ends or the block does."""
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
      handler.addFilter(self)
    self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._hold_unraisable
    try:
      yield
    finally:
      sys.unraisablehook = self._previous_hook
      for handler in handlers:
        handler.removeFilter(self)


def _exit_now(status: int) -> None:
  """Ends the process at once. A checkpoint save that failed or was interrupted can leave
  orbax's background threads waiting on each other, and a normal exit joins them first: the
  process would hang after its last line. Whatever could be saved has been by now (the
  checkpoint manager is closed, the lock released); a save left half-written is a temporary
  folder that the next run ignores."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


@contextlib.contextmanager
def resumable_on_interrupt(path, resumes: str):
  """How train.py and convert.py end on anything but success, promptly (`_exit_now`):

  - Ctrl-C: one line saying how the run resumes (`resumes`: from where), not a traceback;
    exit status 130, as a shell reports an interrupted command. An error raised while the run
    wound down after it (orbax's, closing its save) counts as the interruption, and so does a
    Ctrl-C that a finaliser swallowed (`interrupts`).
  - a file that could not be written or read (disk full, a read-only folder, a name too long):
    one line naming the file (else the run's folder) and the system's error, in place of
    orbax's and tensorstore's reports of the failure (`_HeldErrorReports`); exit status 1.
  - any other error: its traceback, as Python prints it; exit status 1.
  """
  held = _HeldErrorReports()
  with held.installed():  # until the process ends: failing threads go on reporting
    try:
      with interrupts.remembered():
        yield
        interrupts.raise_if_requested()
    except SystemExit:
      held.release()
      raise
    except BaseException as error:  # pylint: disable=broad-exception-caught
      if any(isinstance(cause, KeyboardInterrupt) for cause in _chain(error)):
        held.drop()
        sys.stderr.write(f'Interrupted. The same command resumes the run in {path}: {resumes}.\n')
        _exit_now(130)
      failure = storage_failure(error)
      if failure:
        held.drop()
        file, reason = failure
        sys.stderr.write(
          f'Could not write or read {file or f"in {path}"}: {reason}. Free space or fix the '
          f'folder; then the same command resumes the run in {path}: {resumes}.\n'
        )
      else:
        held.release()
        traceback.print_exc()
      _exit_now(1)
    held.release()


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for train.py and convert.py (`app.run(main, flags_parser=parse_flags)`).

  An override of a field the config does not have (`--config.num_epoch=5`) ends like any other
  flag error, in one message with ml_collections' spelling hint, instead of its AttributeError
  traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as error:
    cause = error.args[0] if error.args else error
    detail = cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause)
    overrides = [arg.split('=', 1)[0] for arg in argv if arg.startswith('--config.')]
    named = [
      flag for flag in overrides if any(f"'{field}'" in detail for field in flag.split('.')[1:])
    ]
    if not named:  # not an override's: an error in the config file itself
      raise
    sys.exit(
      f'FATAL Flags parsing error: {named[0]} names a field the config does not have: '
      f'{detail}\nOnly the fields of the config file can be overridden: check the '
      'spelling against it.'
    )
