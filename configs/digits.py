"""The bundled default: a tiny QCFS net on scikit-learn's 8x8 digits, offline, in minutes on a CPU.

    python train.py --config=configs/digits.py --workdir=workdirs/digits

Trains 30 epochs, then prints the ANN / QCFS / COS table for T = 1..16 on the 360 held-out digits.
Reached here: ANN about 97 %; at T = 1 about 77 % without shifts and 86 % with COS (rho = 2).
Float32 training rounds differently on different CPUs, so these move by a point or so.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.arch = 'tiny'
  config.dataset = 'digits'
  config.data_source = 'digits'
  config.input_shape = (8, 8, 1)
  config.mean = (0.5,)
  config.std = (0.5,)
  config.crop_padding = 1
  config.flip = False
  config.autoaugment = False
  config.cutout_size = 0
  config.batch_size = 64
  config.num_epochs = 30
  config.learning_rate = 0.05
  config.log_every_steps = 100
  config.checkpoint_every_steps = 200
  config.eval_every_epochs = 10
  config.eval_batch_size = 120
  config.conversion.max_T = 16
  config.conversion.rhos = (2, 4)
  config.conversion.srp_taus = (2, 4)
  config.conversion.batch_size = 120
  return config
