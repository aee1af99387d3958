"""pipetrace: trace an image classifier's pipeline (OpenCV -> PIL -> torchvision -> PyTorch).

The public API, for use from your own code (see README.md, "Use it from Python"):
"""

__version__ = "0.1.0"
