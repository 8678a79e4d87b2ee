"""The short-budget recipe on the CIFAR-10 image folders, sized for a 2-core CPU.

    python train.py --config=configs/cifar10_short.py --workdir=workdirs/cifar10_resnet20_short \
        --config.data_dir=../shared/data/cifar10-jpeg
    python train.py --config=configs/cifar10_short.py:vgg16 --workdir=workdirs/cifar10_vgg16_short \
        --config.data_dir=../shared/data/cifar10-jpeg

ResNet-20 (the default) trains 30 epochs, about 2.6 hours here; VGG-16 15 epochs, about 6 hours,
and its conversion report about 2 more: run it in the background, the same command resumes it.
The recipe: thresholds from the data, L = 32 -> 16 -> 8 -> 4 at 30, 50 and 70 % of the steps,
label smoothing, Nesterov momentum, no weight decay on BatchNorm, biases and thresholds, a
1-epoch warm-up and a linear decay; crops and flips only (docs/results/short_recipe/ measured
each). Reached on the JPEG test set (docs/results/): ResNet-20 ANN 85.07 %, COS (rho = 4)
84.51 % at T = 1; VGG-16 ANN 86.77 %, COS (rho = 4) 86.60 % at T = 1.
"""

from configs import cifar10

EPOCHS = {'resnet20': 30, 'vgg16': 15}


def get_config(arch: str = 'resnet20'):
  if arch not in EPOCHS:
    raise ValueError(f'cifar10_short.py:{arch}: expected one of {sorted(EPOCHS)}.')
  config = cifar10.get_config()
  config.arch = arch
  config.data_source = 'image_folder'
  config.num_epochs = EPOCHS[arch]
  config.autoaugment = False
  config.cutout_size = 0
  config.threshold_init = 'percentile'
  config.levels_schedule = '0:32,0.3:16,0.5:8,0.7:4'
  config.label_smoothing = 0.1
  config.nesterov = True
  config.weight_decay_on = 'kernels'
  config.warmup_epochs = 1.0
  config.lr_schedule = 'linear'
  config.log_every_steps = 50
  config.eval_every_epochs = 5
  if arch == 'vgg16':
    config.checkpoint_every_steps = 100  # about 5 minutes of VGG-16 here
  config.conversion.rhos = (2, 4, 8)
  config.conversion.max_T = 32
  return config
