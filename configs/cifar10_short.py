"""The short-budget recipe: ResNet-20 (L = 4) on CIFAR-10 in about 2.5 hours on a 2-core CPU.

    python train.py --config=configs/cifar10_short.py --workdir=workdirs/cifar10_resnet20_short \
        --config.data_dir=../shared/data/cifar10-jpeg

What won in docs/results/short_recipe/ (2 epochs of ResNet-20, each change measured against
configs/cifar10_resnet20_cpu.py): thresholds from the data (+13 points), a finer L first, here
32 -> 16 -> 8 -> 4 at 30, 50 and 70 % of the steps (+5.6 for 32 -> 4 at 60 %, +1.8 more for the
gradual one), then label smoothing, Nesterov momentum and no weight decay on BatchNorm, biases
and thresholds (+2.3), and a warm-up with a linear decay (+1.1).
30 epochs, crops and flips only (AutoAugment and Cutout regularise long runs, and slow short
ones). configs/cifar10_short_vgg16.py trains VGG-16 with the same recipe.
Reached here (2026-11-30, JPEG test set, docs/results/): ANN 85.07 %; COS (rho = 4) 84.51 % at
T = 1 and 85.03 % at T = 2; without shifts 46.36 % at T = 1.
"""

from configs import cifar10_resnet20_cpu


def get_config():
  config = cifar10_resnet20_cpu.get_config()
  config.num_epochs = 30
  config.threshold_init = 'percentile'
  config.levels_schedule = '0:32,0.3:16,0.5:8,0.7:4'
  config.label_smoothing = 0.1
  config.nesterov = True
  config.weight_decay_on = 'kernels'
  config.warmup_epochs = 1.0
  config.lr_schedule = 'linear'
  config.eval_every_epochs = 5
  return config
