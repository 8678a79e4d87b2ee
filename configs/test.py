"""The end-to-end test config: synthetic data, a tiny net, a few steps; seconds on a CPU.

    python train.py --config=configs/test.py --workdir=/tmp/cos_jax_test

Reaches a final test accuracy above 50 % on its 4 synthetic classes (tests/test_training.py).
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.arch = 'tiny'
  config.dataset = 'synthetic'
  config.data_source = 'synthetic'
  config.num_classes = 4
  config.input_shape = (8, 8, 1)
  config.synthetic_train_size = 256
  config.synthetic_test_size = 64
  config.mean = (0.5,)
  config.std = (0.5,)
  config.crop_padding = 1
  config.flip = False
  config.autoaugment = False
  config.cutout_size = 0
  config.batch_size = 32
  config.num_epochs = 2
  config.learning_rate = 0.2
  config.log_every_steps = 4
  config.checkpoint_every_steps = 5
  config.eval_every_epochs = 1
  config.eval_batch_size = 32
  config.conversion.max_T = 4
  config.conversion.rhos = (2,)
  config.conversion.srp_taus = (2,)
  config.conversion.batch_size = 32
  return config
