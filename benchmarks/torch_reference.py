"""The PyTorch reference's training step on this CPU: the yardstick of `benchmarks.train_step`.

    python -m benchmarks.torch_reference --models=resnet20,vgg16 --threads=2

The COS authors' code is not part of this repository; this is the equivalent of its CIFAR
models and step, written from docs/method.md §6: QCFS as the authors write it (divide by `up`,
floor with a straight-through gradient, clamp to [0, 1], multiply by `up`), VGG-16 and
ResNet-20 with their layer order, SGD with momentum 0.9 and weight decay 5e-4 on every
parameter, cross-entropy, batch 128 of normalised float images. Prints one JSON line per model
with the median step time; needs torch (`pip install "cos_jax[torch]"`) and exits with status 3
when it is missing, which `benchmarks.train_step` reports as a skip.
"""

import argparse
import json
import statistics
import sys
import time

try:
  import torch
  from torch import nn
except ImportError:
  torch = None

LEVELS = 4


if torch is not None:

  class FloorStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
      return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
      return grad

  class QCFS(nn.Module):
    """The authors' QCFS layer (`MyFloor` in their code), threshold `up` initialised to 8."""

    def __init__(self, levels: int = LEVELS):
      super().__init__()
      self.up = nn.Parameter(torch.tensor([8.0]))
      self.levels = levels

    def forward(self, x):
      x = x / self.up
      x = FloorStraightThrough.apply(x * self.levels + 0.5) / self.levels
      return torch.clamp(x, 0, 1) * self.up

  def vgg16(num_classes: int = 10) -> nn.Module:
    layers, channels = [], 3
    for widths in ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)):
      stage = []
      for width in widths:
        stage += [
          nn.Conv2d(channels, width, 3, padding=1),
          nn.BatchNorm2d(width),
          QCFS(),
          nn.Dropout(0.0),
        ]
        channels = width
      layers.append(nn.Sequential(*stage, nn.AvgPool2d(2)))
    classifier = nn.Sequential(
      nn.Flatten(),
      nn.Linear(512, 4096),
      QCFS(),
      nn.Dropout(0.0),
      nn.Linear(4096, 4096),
      QCFS(),
      nn.Dropout(0.0),
      nn.Linear(4096, num_classes),
    )
    return nn.Sequential(*layers, classifier)

  class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int):
      super().__init__()
      self.residual_function = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride, 1, bias=False),
        nn.BatchNorm2d(width),
        QCFS(),
        nn.Conv2d(width, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
      )
      self.shortcut = nn.Sequential()
      if stride != 1 or in_channels != width:
        self.shortcut = nn.Sequential(
          nn.Conv2d(in_channels, width, 1, stride, bias=False), nn.BatchNorm2d(width)
        )
      self.relu = QCFS()

    def forward(self, x):
      return self.relu(self.residual_function(x) + self.shortcut(x))

  def resnet20(num_classes: int = 10) -> nn.Module:
    blocks, channels = [], 16
    for width, stride in ((16, 1), (32, 2), (64, 2)):
      for index in range(3):
        blocks.append(BasicBlock(channels, width, stride if index == 0 else 1))
        channels = width
    return nn.Sequential(
      nn.Conv2d(3, 16, 3, padding=1, bias=False),
      nn.BatchNorm2d(16),
      QCFS(),
      *blocks,
      nn.AdaptiveAvgPool2d(1),
      nn.Flatten(),
      nn.Linear(64, num_classes),
    )

  MODELS = {'vgg16': vgg16, 'resnet20': resnet20}


def step_seconds(arch: str, batch: int, repeats: int) -> float:
  torch.manual_seed(0)
  model = MODELS[arch]().train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
  images = torch.randn(batch, 3, 32, 32)
  labels = torch.randint(0, 10, (batch,))
  loss_fn = nn.CrossEntropyLoss()

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.item()

  step()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='resnet20,vgg16')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  if torch is None:
    print('torch is not installed: pip install "cos_jax[torch]"', file=sys.stderr)
    sys.exit(3)
  torch.set_num_threads(args.threads)
  for arch in args.models.split(','):
    seconds = step_seconds(arch, args.batch, args.repeats)
    print(
      json.dumps(
        {
          'arch': arch,
          'batch': args.batch,
          'threads': args.threads,
          'torch': torch.__version__,
          'seconds': seconds,
        }
      ),
      flush=True,
    )


if __name__ == '__main__':
  main()
