"""VGG-16, L = 4, on CIFAR-10 with the published recipe (docs/method.md §7).

    python train.py --config=configs/cifar10.py --workdir=workdirs/cifar10_vgg16

Data come from tfds by default (needs internet and tensorflow). Offline, point it at local data:
    --config.data_source=image_folder --config.data_dir=../shared/data/cifar10-jpeg
    --config.data_source=cifar_pickle --config.data_dir=<folder with cifar-10-batches-py>
Expected (QCFS paper, 300 epochs, one GPU): ANN 95.5 %, SNN 94.95 % at T = 8 without COS.
Every other config imports this one and overrides a few fields; every field is here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Model.
  config.arch = 'vgg16'  # vgg16 | resnet18 | resnet20 | resnet34 | tiny
  config.levels = 4  # QCFS quantization levels L
  # Training at other L first: 'fraction:L,fraction:L,...', each L from that fraction of the
  # training steps on, ending with `levels` (e.g. '0:32,0.6:4'); '' trains at `levels` throughout.
  config.levels_schedule = ''
  config.threshold_init = 'constant'  # constant (8.0, the published init) | percentile (data)
  config.threshold_percentile = 99.0  # percentile: of each layer's input, layer by layer
  config.threshold_init_examples = 256  # percentile: training images it is computed on
  config.model_kwargs = ml_collections.ConfigDict()  # extra model fields, e.g. dropout_rate
  # Data.
  config.dataset = 'cifar10'
  config.num_classes = 10
  config.input_shape = (32, 32, 3)
  config.data_source = 'tfds'  # tfds | cifar_pickle | image_folder | digits | synthetic
  config.data_dir = ''  # root of cifar_pickle / image_folder data
  config.tfds_dir = ''  # tfds: where its prepared data sets live ('' is tfds' own default)
  config.test_split = 'test'
  config.digits_test_size = 360  # digits: held-out examples of the fixed split
  config.synthetic_train_size = 1024  # synthetic: examples per split
  config.synthetic_test_size = 256
  # Input pipeline (grain): threads reading and transforming batches ahead of the step, or
  # worker processes doing it (for TPU hosts; 0 keeps it in the training process).
  config.data_threads = 1  # 1 outran 2 on 2 cores; more on bigger hosts
  config.data_workers = 0
  config.preload_images = True  # image_folder: every image decoded once, at the start (184 MB)
  config.mean = (0.4914, 0.4822, 0.4465)
  config.std = (0.2023, 0.1994, 0.2010)
  # Augmentation (docs/method.md §7): the 'cifar' recipe (crop, flip, AutoAugment, Cutout
  # below) or 'imagenet' (RandomResizedCrop and flip; evaluation resizes to 256 and centre-crops
  # 224).
  config.preprocess = 'cifar'
  config.crop_padding = 4
  config.flip = True
  config.autoaugment = True  # AutoAugment's CIFAR-10 policy
  config.cutout_size = 16  # one square hole; 0 turns Cutout off
  # Optimisation.
  config.batch_size = 128
  config.num_epochs = 300
  config.learning_rate = 0.1
  config.lr_schedule = 'cosine'  # cosine | linear, both to 0 after the warm-up
  config.warmup_epochs = 0.0  # linear warm-up from 0 (may be fractional)
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.weight_decay_on = 'all'  # all (the QCFS thresholds included) | kernels (convs, dense)
  config.label_smoothing = 0.0
  # bfloat16 forward and backward passes for TPUs and GPUs (parameters, optimizer and BatchNorm
  # statistics stay float32; evaluation and conversion run in float32). Slow on CPUs.
  config.half_precision = False
  # Precision of training's convolutions and matrix products: '' leaves JAX's default (the
  # backend's fast one, as the Flax examples do), or 'highest' | 'high' | 'default'.
  config.train_precision = ''
  config.seed = 0
  # Bookkeeping.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500  # and at the end of every epoch
  config.eval_every_epochs = 10
  config.eval_batch_size = 500
  # Conversion report after training (also what convert.py runs).
  config.conversion = ml_collections.ConfigDict()
  config.conversion.enabled = True
  config.conversion.max_T = 32  # accuracy at every T = 1..max_T
  config.conversion.statistics_T = 4  # offset spikes, firing rates and synaptic ops over T steps
  config.conversion.rhos = (4,)  # COS pre-simulation lengths
  config.conversion.srp_taus = (4,)  # SRP pre-simulation lengths (the baseline); () for none
  config.conversion.rounds = 1  # COS rounds k
  config.conversion.batch_size = 100
  config.conversion.num_examples = -1  # -1: the whole test set; else a fixed random subset
  config.conversion.chunk = 0  # time steps per simulation chunk; 0: rho or tau, else 8
  # Convolutions and matrix products of the SNN and the report's ANN pass: 'highest' (full
  # precision on every backend; TPUs and recent GPUs otherwise round float32 operands, which
  # changes spikes), 'high' or 'default' (the backend's fastest).
  config.conversion.precision = 'highest'
  return config
