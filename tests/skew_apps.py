"""Inference code as apps write it, for `pipetrace skew`: the demo checkpoint's evaluation
pipeline written by hand, and the same with one classic bug planted in each function.

Each function takes an image file path and returns what the app would feed the model.
The constants are the demo's contract (``Preprocess(size=224, crop_pct=1.0)``, ImageNet
statistics); ``test_skew.py`` checks that they still are.
"""

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

SIZE = 224  # model input side
RESIZE = 224  # short side before the centre crop (size / crop_pct)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _rgb(path: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _resize_crop(hwc: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, SIZE, SIZE) uint8, antialiased as in training."""
    t = torch.from_numpy(hwc).permute(2, 0, 1)
    return v2.CenterCrop(SIZE)(v2.Resize(RESIZE, antialias=True)(t))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return v2.Normalize(MEAN, STD)(x)


def correct(path: str) -> torch.Tensor:
    """The checkpoint's pipeline by hand: PIL + torchvision, the seed's classic chain."""
    img = Image.open(path).convert("RGB")
    return v2.Compose([v2.Resize(RESIZE), v2.CenterCrop(SIZE), v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])(img)


def bgr(path: str) -> torch.Tensor:
    """cv2.imread without cvtColor."""
    return _normalize(_resize_crop(cv2.imread(path, cv2.IMREAD_COLOR)).float() / 255)


def no_normalize(path: str) -> torch.Tensor:
    return _resize_crop(_rgb(path)).float() / 255


def normalize_twice(path: str) -> torch.Tensor:
    return _normalize(_normalize(_resize_crop(_rgb(path)).float() / 255))


def scale_0_255(path: str) -> torch.Tensor:
    """.float() where ToDtype(scale=True) was meant: normalized, but 0-255."""
    return _normalize(_resize_crop(_rgb(path)).float())


def hwc(path: str) -> np.ndarray:
    """Right values, but an (H, W, 3) NumPy array."""
    return _normalize(_resize_crop(_rgb(path)).float() / 255).permute(1, 2, 0).numpy()


def cv2_resize(path: str) -> torch.Tensor:
    """cv2.resize (bilinear, no antialiasing) to the same size and crop as torchvision's."""
    rgb = _rgb(path)
    h, w = rgb.shape[:2]
    nh, nw = (RESIZE, int(RESIZE * w / h)) if h <= w else (int(RESIZE * h / w), RESIZE)
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = round((nh - SIZE) / 2), round((nw - SIZE) / 2)
    crop = small[top:top + SIZE, left:left + SIZE]
    return _normalize(torch.from_numpy(crop).permute(2, 0, 1).float() / 255)


PLANTED = {  # function name -> the bug `pipetrace skew` must name
    "bgr": "bgr", "no_normalize": "no-normalize", "normalize_twice": "double-normalize",
    "scale_0_255": "0-255", "hwc": "hwc", "cv2_resize": "resize-cv2",
}
