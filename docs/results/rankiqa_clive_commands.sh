#!/usr/bin/env bash
# The CPU run behind docs/results/rankiqa_clive.json (2 shared CPU cores, no ImageNet weights available).
# Stage 1 briefly from random initialisation on 92 pristine images, then stage 2 once per protocol split.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD
RUNS=${RUNS:-/tmp/rankiqa_runs}
mkdir -p "$RUNS"
COMMON="model.fc_width=4096 engine.num_workers=0 engine.progress=false engine.optimizer=sgd engine.momentum=0.9
  engine.weight_decay=5.0e-4 engine.schedule=constant engine.checkpoint_every=1000 engine.keep_checkpoints=1
  engine.device=cpu"

python -m training.rankiqa --config training/rankiqa/configs/live_rank.yaml $COMMON \
  model.init=random rank.images=../shared/data/pristine rank.crop_size=64 \
  validation.holdout=4 validation.crop_size=64 \
  engine.output_dir="$RUNS/stage1" engine.steps=24 engine.batch_size=4 engine.lr=1.0e-3 engine.log_every=4 \
  engine.validate_every=0 --output "$RUNS/stage1.json"
rm -rf "$RUNS/stage1/checkpoints"

for split in 0 1 2 3 4 5 6 7 8 9; do
  python -m training.rankiqa --config training/rankiqa/configs/mos.yaml $COMMON \
    model.init="$RUNS/stage1/export" mos.images=../shared/data/clive/images mos.scores=../shared/data/clive/mos.csv \
    mos.split_index=$split mos.crop_size=64 test.crops=3 test.crop_size=64 test.batch_size=30 \
    engine.output_dir="$RUNS/mos_split$split" engine.steps=10 engine.batch_size=16 engine.lr=1.0e-4 \
    engine.grad_clip=5.0 engine.log_every=2 --output "$RUNS/mos_split$split.json"
  rm -rf "$RUNS/mos_split$split/checkpoints"
  if [ "$split" != 0 ]; then rm -f "$RUNS/mos_split$split/export/model.safetensors"; fi  # disk: keep split 0's
done
python -m training.rankiqa.summarize "$RUNS" docs/results/rankiqa_clive.json
