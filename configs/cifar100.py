"""VGG-16, L = 4, on CIFAR-100 (the published recipe, learning rate 0.02).

    python train.py --config=configs/cifar100.py --workdir=workdirs/cifar100_vgg16

Offline: --config.data_source=cifar_pickle --config.data_dir=<folder with cifar-100-python>.
Published with COS (rho = 4): ANN 76.28 %, SNN 74.24 % at T = 1, 76.03 % at T = 2.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.dataset = 'cifar100'
  config.num_classes = 100
  config.learning_rate = 0.02
  config.mean = (0.5071, 0.4865, 0.4409)
  config.std = (0.2673, 0.2564, 0.2762)
  return config
