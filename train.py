"""Trains a QCFS network, then converts it and reports the SNN accuracy.

    python train.py --config=configs/digits.py --workdir=workdirs/digits

Any config field can be overridden, e.g. --config.num_epochs=10. Running again with the same
--workdir resumes the run.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from cos_jax import cli, training

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training configuration file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder holding the run (checkpoints, metrics, report).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.check_workdir(FLAGS.workdir)
  logging.set_verbosity(logging.WARNING)  # orbax reports every checkpoint at INFO
  cli.initialize_distributed()
  with cli.resumable_on_interrupt(
    FLAGS.workdir,
    'training from its newest checkpoint, the conversion report after it from '
    'its last finished batch',
  ):
    training.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
