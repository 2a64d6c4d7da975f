#!/usr/bin/env bash
# One prepared command for a lent GPU (the device tool: 15 min of device time per session, 10 min per
# command). Not run yet: no GPU has been lent to this project's sessions so far.
#
#   git show f7e9743:training/hgsc-demo/checkpoint.safetensors > training/hgsc-demo/checkpoint.safetensors   # first, here,
#   python training/hgsc-demo/rename_settings.py training/hgsc-demo/checkpoint.safetensors                  # then once
#   run(command="bash benchmarks/gpu_session.sh train", timeout_s=560,
#       carry=["training/hgsc-demo/checkpoint.safetensors"])             # ~8 min: continue the demo pair
#   run(command="bash benchmarks/gpu_session.sh measure", timeout_s=500)  # ~6 min: GPU figures
#
# train:   resumes the embedded pair's training state (training/hgsc-demo/checkpoint.safetensors: not in the
#          tree, restored from git history and carried, see above and training/hgsc-demo/README.md) on the GPU for
#          TRAIN_SECONDS (default 420) and returns the pair files and the new training state in $OUT
#          (the 53 MB state split in 15 MB parts, the largest file the tool brings back is 16 MiB:
#          `cat checkpoint.part-* > training/hgsc-demo/checkpoint.safetensors` here).
# measure: benchmarks/throughput.py on the GPU (64 px demo pair and a random-weight paper-size 256-px
#          pair: images/s against the FLOP floor) and benchmarks/speed.py at 16 images.
#
# The device image has torch, timm, safetensors, tqdm, requests, numpy, pillow, matplotlib; not
# platformdirs: carry it as a wheel (`.whl`, see the device README) or rely on PYTHONPATH below,
# which only fails where progaug.hub needs the user cache folder (it does not for the embedded pair).
set -uo pipefail
OUT=${OUT:-/tmp/progaug-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

case "${1:-}" in
train)
    if [ ! -f training/hgsc-demo/checkpoint.safetensors ]; then
        echo "training/hgsc-demo/checkpoint.safetensors is missing: restore it (training/hgsc-demo/README.md) and carry it" >&2
        exit 2
    fi
    mkdir -p runs/hgsc-demo && cp training/hgsc-demo/checkpoint.safetensors runs/hgsc-demo/
    timeout "${TRAIN_SECONDS:-420}" python3 -m progaug train --data hgsc --out runs/hgsc-demo --num-res-blocks 1 \
        --checkpoint-every 1000 --train-steps 30000 --resume --device cuda 2>&1 | tr '\r' '\n' | grep -v 'it/s\]$' | tail -20
    # a timeout kill leaves the last checkpoint readable (written to a temporary file, then renamed)
    cp runs/hgsc-demo/source.safetensors runs/hgsc-demo/target.safetensors runs/hgsc-demo/card.json "$OUT/"
    split -b 15M -d runs/hgsc-demo/checkpoint.safetensors "$OUT/checkpoint.part-"
    python3 -c "import json; c = json.load(open('runs/hgsc-demo/card.json')); print(c['training'])"
    ;;
measure)
    python3 benchmarks/throughput.py --device cuda --n 2000 --paper-size --out "$OUT/throughput"
    python3 benchmarks/speed.py --device cuda --images 16 --out "$OUT/speed"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh train|measure" >&2
    exit 2
    ;;
esac
