"""Converts a trained QCFS network to an SNN and writes the conversion report to the workdir.

    python convert.py --workdir=workdirs/digits
    python convert.py --workdir=workdirs/cifar10_resnet20 \
        --config=configs/cifar10_resnet20_cpu.py --config.conversion.rhos='(2,4,8)' \
        --config.data_dir=../shared/data/cifar10-jpeg
    python convert.py --workdir=workdirs/imported --config=configs/cifar10.py \
        --torch_checkpoint=vgg16_cifar10.pth

Without --config the run's own config.json is used; --data_dir=... points it at the test data
where they lie on this machine (a run's relative data_dir is read from the current directory).
To change the conversion settings pass the config the run was trained with, its --config.x=...
overrides, and the new conversion values: a config that describes another network or training
run than the checkpoint's is refused, naming the fields that differ (only the data's source and
reading and the report's settings may).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from cos_jax import cli, conversion_report

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file (default: <workdir>/config.json).', lock_config=False
)
flags.DEFINE_string('workdir', None, 'Run folder: its checkpoint is read and the report written.')
flags.DEFINE_string(
  'torch_checkpoint',
  None,
  'A PyTorch state_dict (.pth or .npz) of the reference code to convert instead.',
)
flags.DEFINE_string(
  'data_dir',
  None,
  "Where the test data lie, in place of the config's data_dir (which a run records as given, "
  'so that a relative one is read from the current directory).',
)
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.check_workdir(FLAGS.workdir)
  logging.set_verbosity(logging.WARNING)  # orbax reports every restore at INFO
  cli.initialize_distributed()
  with cli.resumable_on_interrupt(
    FLAGS.workdir, 'the conversion report from its last finished batch'
  ):
    conversion_report.convert_and_report(
      FLAGS.workdir, FLAGS.config, FLAGS.torch_checkpoint, FLAGS.data_dir
    )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
