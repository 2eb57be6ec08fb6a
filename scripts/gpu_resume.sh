#!/usr/bin/env bash
# Second device call: continue the VAE and Glow from the first call's weights.
set -u
export ROSE_DATA=.carry/data PYTHONUNBUFFERED=1
mkdir -p /tmp/ck && cp .carry/ck/* /tmp/ck/
timeout ${2:-225} python3 scripts/train_shipped.py --out /tmp/ck --minutes "${1:-2.8}" --only vae-fmnist glow-fmnist
for n in vae-fmnist glow-fmnist; do
  cp /tmp/ck/$n.safetensors /tmp/ck/$n.json "$OUT"/ 2>/dev/null
  grep -v '^$' /tmp/ck/$n.log | tail -n 100 >> "$OUT/train.log"
done
