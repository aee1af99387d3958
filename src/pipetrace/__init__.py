"""pipetrace: trace an image classifier's pipeline (OpenCV -> PIL -> torchvision -> PyTorch).

The public API, for your own code (README.md, "Use it from Python"). Names are imported
lazily, so ``import pipetrace`` stays cheap until you use one.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # stages 1-2: read and convert
    "load_bgr": "images", "decode_bgr": "images", "bgr_to_rgb": "images",
    "rgb_to_pil": "images", "load_pil": "images", "ImageLoadError": "images",
    "LoadLimits": "images",
    # stage 3: the preprocessing contract and its chains
    "Preprocess": "transforms", "classic_transform": "transforms",
    "fast_transform": "transforms", "normalize_batch": "transforms",
    # stage 4: datasets and loaders
    "scan_image_folder": "scan", "find_splits": "scan", "ImageDataset": "data",
    "make_loader": "data", "LoaderConfig": "data",
    # the pipelines, declared once (the loader runs them, the tracer observes them)
    "Pipeline": "pipeline", "Stage": "pipeline", "image_pipeline": "pipeline",
    "seed_pipeline": "pipeline",
    # the stage trace and the checks
    "trace_image": "dataset_trace", "trace_transforms": "trace", "summarize": "trace",
    "StageRecord": "trace", "DataFlow": "trace", "StageTracer": "trace",
    "trace_dataset": "dataset_trace", "DatasetTrace": "dataset_trace",
    "inspect_batch": "checks", "channel_reference": "checks",
    "check_train_eval_skew": "checks", "Finding": "checks",
    # stage 5 and the training trace
    "TrainConfig": "config", "fit": "train", "EpochRecord": "records", "Observer": "records",
    "TrainResult": "records", "observe": "observations", "Observation": "observations",
    "ModelConfig": "model", "build_model": "model",
    # initial weights and the learning-rate range test
    "fetch_weights": "weights", "load_weights": "weights", "WeightsReport": "records",
    "find_lr": "lr_find", "suggest_lr": "lr_find", "RangeTest": "lr_find",
    "LRFinderResult": "records",
    # the prediction trace
    "load_model": "predict", "trace_prediction": "predict", "predict_files": "predict",
    "record_prediction": "predict", "PredictionRecord": "predict",
    "trace_layers": "layers", "LayerRecord": "layers", "LayerTrace": "layers",
    "trace_ops": "ops", "OpRecord": "ops", "OpTrace": "ops", "replay": "ops",
    "TraceError": "ops", "grad_cam": "explain", "gradcam_target": "explain",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipetrace' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
