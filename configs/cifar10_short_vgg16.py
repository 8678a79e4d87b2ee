"""VGG-16 (L = 4) with the short-budget recipe of configs/cifar10_short.py, 15 epochs.

    python train.py --config=configs/cifar10_short_vgg16.py --workdir=workdirs/cifar10_vgg16_short \
        --config.data_dir=../shared/data/cifar10-jpeg

VGG-16 trains at about 35 images/s on a 2-core CPU (benchmarks/train_step.py), so its 15 epochs
take about 6 hours, and the conversion report at the end (rho = 2, 4, 8, T up to 32, the full
test set) about 2 more: run it in the background; the same command resumes it. On the JPEG
CIFAR-10 it reached 86.77 % (ANN, L = 4) on 2026-11-30, and COS at rho = 4 86.60 % at T = 1 and
86.80 % at T = 2: docs/results/.
"""

from configs import cifar10_short


def get_config():
  config = cifar10_short.get_config()
  config.arch = 'vgg16'
  config.num_epochs = 15
  config.checkpoint_every_steps = 100  # about 5 minutes of VGG-16 here: little is lost on a stop
  return config
