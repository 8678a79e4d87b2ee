"""ResNet-34, L = 8, on ImageNet (ILSVRC 2012), 224 px: the authors' network (a 3x3 stride-1 stem
without pooling, docs/method.md section 6), so their checkpoints import.

    python train.py --config=configs/imagenet.py --workdir=workdirs/imagenet_resnet34

tfds cannot download ImageNet: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
~/tensorflow_datasets/downloads/manual/ first, or use image folders:
    --config.data_source=image_folder --config.data_dir=<root with train/<class>/ and val/<class>/>
    --config.test_split=val
Published with COS (rho = 8): ANN 74.22 %, SNN 69.11 % at T = 1, 72.66 % at T = 2.
The reference's ImageNet preprocessing: RandomResizedCrop(224) and flips for training; the shorter
side resized to 256 and the centre 224 x 224 for evaluation.
"""

from configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.arch = 'resnet34'
  config.levels = 8
  config.dataset = 'imagenet'
  config.num_classes = 1000
  config.input_shape = (224, 224, 3)
  config.test_split = 'validation'
  config.mean = (0.485, 0.456, 0.406)
  config.std = (0.229, 0.224, 0.225)
  config.preprocess = 'imagenet'
  config.crop_padding = 0
  config.autoaugment = False
  config.cutout_size = 0
  config.num_epochs = 120
  config.batch_size = 256
  config.eval_batch_size = 200
  config.eval_every_epochs = 5
  config.data_threads = 16
  config.preload_images = False  # 1.28 M images of any size: decoded when read
  config.conversion.rhos = (8,)
  config.conversion.batch_size = 50
  return config
