"""`pipetrace predict`, `skew` and `export`: the commands that use a trained model."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def add_predict(pr) -> None:
    pr.add_argument("model", help="run folder or checkpoint file")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--top-k", type=int, default=3)
    pr.add_argument("--depth", type=int, default=None,
                    help="fold modules deeper than this (1 = the model's direct children)")
    pr.add_argument("--ops", action="store_true",
                    help="show every operation of the forward pass, not the rows by module")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--save", metavar="DIR", help="write pictures (one image) or predictions.csv")
    pr.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from ..predict import list_images, load_model, predict_files, predictions_csv, record_prediction
    from ..report import terminal as term

    console = term.make_console()
    lm = load_model(args.model)
    files = list_images(args.images)
    if len(files) == 1 and not os.path.isdir(args.images[0]):
        record = record_prediction(lm, files[0], top_k=args.top_k, depth=args.depth,
                                   pictures=bool(args.save))
        lt = record.trace
        if args.json:
            import json

            print(json.dumps(record.to_dict(), indent=1))
        elif args.ops:
            console.print(term.op_table(lt.ops, title=f"Every operation — {term.clean(files[0])}"))
            console.print("Top classes:\n" + term.top_k_lines(lt), markup=False)
        else:
            console.print(term.layer_table(lt, title=f"Prediction trace — {term.clean(files[0])}"))
            console.print("Top classes:\n" + term.top_k_lines(lt), markup=False)
        if args.save:
            from ..report.build import prediction_block
            from ..report.files import save_prediction_pictures

            save_prediction_pictures(prediction_block(record), args.save)
        return 0
    preds = predict_files(lm, files, top_k=args.top_k)
    if args.json:
        import json

        print(json.dumps({"checkpoint": lm.source, "classes": lm.classes,
                          "predictions": [p.to_dict() for p in preds]}, indent=1))
        return 0
    text = predictions_csv(preds)
    if args.save:
        from ..files import write_text_atomic

        Path(args.save).mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.save) / "predictions.csv", text)
        console.print(f"Wrote {len(preds)} predictions to {term.clean(args.save)}/predictions.csv")
    else:  # a terminal (or a pipe) gets every name neutralised, and \n line ends
        sys.stdout.write(predictions_csv([printable_prediction(p) for p in preds])
                         .replace("\r\n", "\n"))
    return 0


def printable_prediction(p):
    """The prediction with its path, classes and error made safe for a terminal."""
    from dataclasses import replace

    from ..text import printable

    return replace(p, path=printable(p.path), error=printable(p.error),
                   top_k=[(printable(c), v) for c, v in p.top_k])


def _images_or_validation(lm, images: list[str], limit: int | None) -> list[str]:
    """The images given, or the checkpoint's own validation images when none are."""
    from ..predict import list_images, validation_images

    if images:
        return list_images(images)
    files = validation_images(lm, limit)
    if not files:
        data = (lm.checkpoint.get("train_config") or {}).get("data") or "?"
        raise ValueError(f"no images given, and the checkpoint's dataset {data!r} has no "
                         "validation images here (no val/ folder, and no record of the files "
                         "the run held out): give image files or folders")
    return files


def add_skew(sk) -> None:
    sk.add_argument("model", help="run folder or checkpoint file")
    sk.add_argument("images", nargs="*", help="image files or folders (default: validation "
                    "images of the checkpoint's dataset)")
    sk.add_argument("--preprocess", required=True, metavar="MODULE:FUNCTION",
                    help="your function: image file path -> the tensor/array you feed the "
                    "model (module name or path/to/file.py)")
    sk.add_argument("--limit", type=int, default=8,
                    help="validation images to use when none are given (default: 8)")
    sk.add_argument("--json", action="store_true")
    sk.set_defaults(func=cmd_skew)


def cmd_skew(args) -> int:
    from ..predict import load_model
    from ..report import terminal as term
    from ..skew import check_skew, load_user_function

    lm = load_model(args.model)
    fn = load_user_function(args.preprocess)
    report = check_skew(lm, fn, _images_or_validation(lm, args.images, args.limit),
                        name=args.preprocess)
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=1))
    else:
        term.print_skew(term.make_console(), report)
    return 1 if report.skew else 0


def add_export(ex) -> None:
    from ..export import OPSET

    ex.add_argument("model", help="run folder or checkpoint file")
    ex.add_argument("images", nargs="*", help="images to check on (default: validation "
                    "images of the checkpoint's dataset)")
    ex.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    ex.add_argument("--opset", type=int, default=OPSET)
    ex.add_argument("--limit", type=int, default=100,
                    help="validation images to check on when none are given (default: 100)")
    ex.add_argument("--json", action="store_true", help="print the check as JSON")
    ex.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from ..predict import load_model
    from ..report import terminal as term

    try:
        from ..export import check_onnx, export_onnx
    except ImportError as exc:
        raise ValueError(f"export needs onnx and onnxruntime ({exc}): pip install "
                         "'pipetrace[onnx]'") from None
    lm = load_model(args.model)
    files = _images_or_validation(lm, args.images, args.limit)  # before writing anything
    path = export_onnx(lm, args.onnx, opset=args.opset)
    check = check_onnx(lm, path, files)
    if args.json:
        import json

        print(json.dumps(check.to_dict(), indent=1))
    else:
        term.print_onnx_check(term.make_console(), check, opset=args.opset)
    return 0 if check.ok else 1
