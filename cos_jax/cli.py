"""What train.py and convert.py share on the command line: flag parsing that turns a mistyped
config override into one flag error, and a Ctrl-C that ends in one line saying how to resume."""

import contextlib
import sys

from absl import app


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
