"""What train.py and convert.py share on the command line: the flags of a run over several
processes, flag parsing that turns a mistyped config override into one flag error, and a Ctrl-C
that ends in one line saying how to resume."""

import contextlib
import sys

import jax
from absl import app, flags

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


@contextlib.contextmanager
def resumable_on_interrupt(path, resumes: str):
  """Ctrl-C in train.py or convert.py ends the process with one line saying how the run resumes
  (`resumes`: from where), not a traceback; exit status 130, as a shell reports an interrupted
  command. Whatever the run was doing has been wound down by then (checkpoint manager closed,
  lock released)."""
  try:
    yield
  except KeyboardInterrupt:
    sys.stderr.write(f'Interrupted. The same command resumes the run in {path}: {resumes}.\n')
    sys.exit(130)


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
