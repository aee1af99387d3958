"""Time to accuracy on CIFAR-10 from the JPEG files, on this machine's CPU, loading included.

    python bench/time_to_accuracy.py [DATA_DIR] [--skip-anchor]     (make bench-tta)

pipetrace: `pipetrace train DATA/cifar10 --preset cifar` (its defaults, through `fit`), the
full curve with the wall-clock time at each epoch's end (scan, header checks, decoding,
training and evaluation all counted), and the time to reach 80%, 85%, 88% and 90% test
accuracy. Anchor, in the same run: the CNN and recipe of PyTorch's "Training a Classifier"
tutorial (2 epochs, batch 4, SGD 0.001 + momentum 0.9) through torchvision's ImageFolder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms as v1

from common import data_dir, save
from pipetrace.train import PRESETS, Observer, TrainConfig, fit

TARGETS = (0.80, 0.85, 0.88, 0.90)


class Clock(Observer):
    def __init__(self):
        self.t0 = time.perf_counter()
        self.curve: list[dict] = []

    def on_epoch_end(self, r) -> None:
        self.curve.append({"epoch": r.epoch, "seconds": time.perf_counter() - self.t0,
                           "train_loss": r.train_loss, "test_acc": r.val_acc})
        print(f"epoch {r.epoch:>2}  {self.curve[-1]['seconds']:7.1f} s  loss {r.train_loss:.3f}  "
              f"test acc {r.val_acc:.4f}", flush=True)


class TutorialNet(nn.Module):
    """The CNN of PyTorch's CIFAR-10 tutorial."""

    def __init__(self):
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def tutorial(root: Path) -> dict:
    t0 = time.perf_counter()
    tf = v1.Compose([v1.ToTensor(), v1.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    train = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "train", tf),
                                        batch_size=4, shuffle=True)
    test = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(root / "test", tf),
                                       batch_size=256)
    torch.manual_seed(0)
    net = TutorialNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    for _ in range(2):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    correct = n = 0
    with torch.no_grad():
        for x, y in test:
            correct += (net(x).argmax(1) == y).sum().item()
            n += len(y)
    return {"test_acc": correct / n, "seconds": time.perf_counter() - t0}


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    root = data_dir(args, "cifar10")
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(**PRESETS["cifar"], data=str(root), out=str(Path(tmp) / "run"))
        clock.t0 = time.perf_counter()
        fit(cfg, observers=(clock,))
    reached = {f"{t:.0%}": next((c["seconds"] for c in clock.curve if c["test_acc"] >= t), None)
               for t in TARGETS}
    print("time to accuracy:", ", ".join(f"{k} {'-' if v is None else f'{v:.0f} s'}"
                                         for k, v in reached.items()))
    anchor = None
    if "--skip-anchor" not in argv:
        anchor = tutorial(root)
        print(f"anchor (tutorial CNN, 2 epochs): test acc {anchor['test_acc']:.4f} in "
              f"{anchor['seconds']:.0f} s")
    print(f"wrote {save('time_to_accuracy', {'curve': clock.curve, 'reached_s': reached, 'anchor': anchor, 'preset': PRESETS['cifar']})}")


if __name__ == "__main__":
    main(sys.argv)
