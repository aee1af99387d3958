#!/usr/bin/env bash
# The GPU check (issues 9 and 18): one GPU, NCCL through torchrun, AMP (bf16) and
# channels_last on the built-in shapes; the fast loader with the JPEG decode on the GPU
# (--decode-on-device: nvJPEG through torchvision.io.decode_jpeg) against the CPU decode; and
# the time to 94% on CIFAR-10 from its JPEG files with the `cifar` preset. At most 10 minutes
# in all. Prepared on a machine without a GPU; see docs/scaling.md and docs/performance.md.
#
#   bench/gpu_check.sh [OUT_DIR]          (default runs/gpu-check; log in OUT_DIR/gpu_check.log)
#
# Steps: render the data (4 x PER_CLASS training, 4 x 100 - 1 validation images: an odd
# count, so a padded validation sampler would show); train under torchrun with one process
# (NCCL, DDP, SyncBatchNorm converted); the same without torchrun (no process group) for the
# cost of DDP on one GPU; on a machine with more GPUs, all of them; resume the torchrun run
# for one more epoch (a copy); then check the traces and print the numbers for docs/performance.md.
# Exits non-zero if a run or a check fails. Environment knobs (defaults for an H100/H200):
# PYTHON, DEVICE=cuda, PER_CLASS=1000, IMAGE=128, EPOCHS=4, BATCH=128, WORKERS=8,
# CIFAR=<folder holding cifar10/ or cifar10-jpg.tar.gz> (default: the first of shared/data,
# ../shared/data, ~/.cache/pipetrace-data that has it; none: the CIFAR-10 step is skipped),
# CIFAR_EPOCHS (default: the preset's).
# `DEVICE=cpu PER_CLASS=40 IMAGE=64 EPOCHS=1 BATCH=16 WORKERS=0 CIFAR=none` runs the
# script's logic on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${1:-runs/gpu-check}
DEVICE=${DEVICE:-cuda} PER_CLASS=${PER_CLASS:-1000} IMAGE=${IMAGE:-128} EPOCHS=${EPOCHS:-4}
BATCH=${BATCH:-128} WORKERS=${WORKERS:-8}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
rm -rf "$OUT" && mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1

step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }
run() {  # run with a wall-clock limit and its time printed
  local t0=$SECONDS
  timeout 300 "$@"
  echo "-- $((SECONDS - t0)) s"
}

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda, \
'| GPUs', torch.cuda.device_count(), '| NCCL', torch.cuda.is_available() and \
torch.cuda.nccl.version())"
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

step "data: built-in shapes, $PER_CLASS per class at ${IMAGE}px"
run "$PY" - "$OUT/shapes" "$PER_CLASS" "$IMAGE" <<'EOF'
import sys
from pipetrace.shapes import ShapesConfig, render

root = render(ShapesConfig(train_per_class=int(sys.argv[2]), val_per_class=100,
                           image_size=int(sys.argv[3]), seed=0), sys.argv[1])
sorted((root / "val" / "star").iterdir())[0].unlink()  # 399 validation images: odd
EOF

COMMON=(--model pipenet-s --image-size "$IMAGE" --crop-pct 1.0 --epochs "$EPOCHS"
        --batch-size "$BATCH" --workers "$WORKERS" --device "$DEVICE" --amp bf16
        --channels-last --seed 0 --dist-timeout 120)
SYNC=(); [ "$DEVICE" = cuda ] && SYNC=(--sync-bn)

step "torchrun, 1 process: DDP over $([ "$DEVICE" = cuda ] && echo NCCL || echo gloo)"
run "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m pipetrace train \
  "$OUT/shapes" --out "$OUT/ddp1" "${COMMON[@]}" "${SYNC[@]}"

step "the same without torchrun (no process group)"
run "$PY" -m pipetrace train "$OUT/shapes" --out "$OUT/plain" "${COMMON[@]}"

RUNS="ddp1 plain"
if [ "$DEVICE" = cuda ] && [ "$NGPU" -gt 1 ]; then
  step "torchrun, $NGPU processes, same global batch ($BATCH / $NGPU per process)"
  run "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NGPU" -m pipetrace \
    train "$OUT/shapes" --out "$OUT/ddp$NGPU" "${COMMON[@]}" "${SYNC[@]}" \
    --batch-size $((BATCH / NGPU))
  RUNS="$RUNS ddp$NGPU"
fi

step "resume (a copy of) the torchrun run for one more epoch"
cp -r "$OUT/ddp1" "$OUT/resumed"
run "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m pipetrace train \
  --resume "$OUT/resumed" --epochs $((EPOCHS + 1)) --device "$DEVICE"

step "fast loader: JPEG decode on the device against the decode in the workers"
run "$PY" - "$OUT/shapes" "$OUT/shapes-jpg" <<'EOF2'
import sys
from pathlib import Path

import cv2

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in src.rglob("*"):  # decoding on the device reads JPEG files only: re-encode the PNGs
    if f.suffix not in (".png", ".jpg"):
        continue
    out = (dst / f.relative_to(src)).with_suffix(".jpg")
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.imread(str(f)), [cv2.IMWRITE_JPEG_QUALITY, 90])
EOF2
run "$PY" -m pipetrace train "$OUT/shapes-jpg" --out "$OUT/cpu-decode" "${COMMON[@]}"
run "$PY" -m pipetrace train "$OUT/shapes-jpg" --out "$OUT/device-decode" "${COMMON[@]}" \
  --decode-on-device
RUNS="$RUNS cpu-decode device-decode"

CIFAR=${CIFAR:-$(for d in shared/data ../shared/data ~/.cache/pipetrace-data; do
  [ -e "$d/cifar10" ] || [ -e "$d/cifar10-jpg.tar.gz" ] && { echo "$d"; break; }; done)}
if [ -n "$CIFAR" ] && [ "$CIFAR" != none ]; then
  step "CIFAR-10 from its JPEG files, the cifar preset: time to 90%, 93%, 94%"
  if [ ! -e "$CIFAR/cifar10" ]; then
    mkdir -p "$OUT/data" && tar -xzf "$CIFAR/cifar10-jpg.tar.gz" -C "$OUT/data" && CIFAR=$OUT/data
  fi
  EPOCHS_ARG=(); [ -n "${CIFAR_EPOCHS:-}" ] && EPOCHS_ARG=(--epochs "$CIFAR_EPOCHS")
  for how in cpu-decode device-decode; do
    EXTRA=(); [ "$how" = device-decode ] && EXTRA=(--decode-on-device)
    run "$PY" -m pipetrace train "$CIFAR/cifar10" --preset cifar --device "$DEVICE" \
      --workers "$WORKERS" --out "$OUT/cifar-$how" "${EPOCHS_ARG[@]}" "${EXTRA[@]}"
    "$PY" - "$OUT/cifar-$how" <<'EOF2'
import json
import sys
from pathlib import Path

rows = [json.loads(line) for line in (Path(sys.argv[1]) / "metrics.jsonl").read_text().splitlines()]
total = 0.0
for r in rows:
    total += r["seconds"]
    r["total"] = total
    print(f"epoch {r['epoch']:>2}  {total:7.1f} s  test acc {r['val_acc']:.4f}  "
          f"{r['images_per_s']:,.0f} img/s")
for target in (0.90, 0.93, 0.94):
    hit = next((r for r in rows if r["val_acc"] >= target), None)
    print(f"{sys.argv[1]}: {target:.0%} " + (f"at epoch {hit['epoch']}, {hit['total']:.1f} s of "
          "training and evaluation" if hit else "not reached"))
EOF2
  done
fi

step "checks and numbers"
"$PY" - "$OUT" "$DEVICE" "$EPOCHS" $RUNS <<'EOF'
import json
import sys
from pathlib import Path

out, device, epochs, runs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
backend = "nccl" if device == "cuda" else "gloo"
failed = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failed.append(what)


for name in runs:
    doc = json.loads((out / name / "trace.json").read_text())
    d, tr = doc["run"]["distributed"], doc["training"]
    print(f"\n{name}: {d['world_size']} process(es), backend {d['backend']}, batch "
          f"{d['per_rank_batch']} x {d['world_size']} = {d['global_batch']}")
    print("epoch  loss   acc    val_loss val_acc  s      img/s")
    for e in tr["epochs"]:
        print(f"{e['epoch']:>5}  {e['train_loss']:.3f}  {e['train_acc']:.3f}  "
              f"{e['val_loss']:.3f}    {e['val_acc']:.3f}    {e['seconds']:<6.1f} "
              f"{e['images_per_s']:,.0f}")
    for r in d["ranks"]:
        print(f"  rank {r['rank']} on {r['host']}: {r['images']} images, "
              f"{r['images_per_s']:,.0f} img/s, loader {r['loader_images_per_s']:,.0f} img/s, "
              f"waiting for data {r['data_share']:.0%}")
    check(sum(map(sum, tr["confusion"])) == 399, f"{name}: 399 validation images counted once")
    if name.startswith("ddp"):
        check(d["backend"] == backend, f"{name}: backend {backend}")
        check(len(d["ranks"]) == d["world_size"], f"{name}: one throughput row per process")

flows = {name: json.loads((out / name / "trace.json").read_text())["data_flow"]
         for name in ("cpu-decode", "device-decode")}
check(flows["device-decode"]["path"] == "fast+device-decode" and any(
    "decode_jpeg" in s["operation"] for s in flows["device-decode"]["stages"]),
    "device-decode: the data-flow trace shows the batch decode where the model is")
resumed = json.loads((out / "resumed" / "trace.json").read_text())["training"]["epochs"]
check([e["epoch"] for e in resumed] == list(range(1, epochs + 2)),
      f"resumed: epochs 1..{epochs + 1}")
sys.exit(1 if failed else 0)
EOF
