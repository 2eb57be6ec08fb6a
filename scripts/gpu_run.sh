#!/usr/bin/env bash
# One device call: train the shipped checkpoints on a GPU within a time budget,
# then copy the model files (not the optimizer state) to $OUT.
set -u
export ROSE_DATA=.carry/data PYTHONUNBUFFERED=1
MIN=${1:-7.5}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
mkdir -p /tmp/ck
timeout ${2:-560} python3 scripts/train_shipped.py --out /tmp/ck --minutes "$MIN"
for n in vae-fmnist glow-fmnist vae-fmnist-background; do
  cp /tmp/ck/$n.safetensors /tmp/ck/$n.json "$OUT"/ 2>/dev/null
  grep -v '^$' /tmp/ck/$n.log | tail -n 200 >> "$OUT/train.log"
done
ls -la "$OUT"
