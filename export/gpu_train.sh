#!/usr/bin/env bash
# Train the damage model on a lent GPU machine (the recipe behind the v3 model; see models/MODEL_CARD.md).
#
# Prepared here (make gpu-bundle): .gpu/data.tar (`dataset crops` + `dataset compact` of the dataset),
# .gpu/start.pt (the checkpoint to fine-tune), .gpu/whl (ultralytics, ultralytics-thop, pydantic and
# its needs, for Python 3.12), .gpu/stub/polars (ultralytics reads results.csv back with polars only
# inside try/except). On the GPU machine, from the repository root:
#   bash export/gpu_train.sh start [HOURS]   # unpack, then train in the background (survives the call)
#   bash export/gpu_train.sh wait  OUT       # wait for the end, copy the run's results to OUT
set -euo pipefail
RUN=/tmp/run/v3
case "${1:-}" in
start)
    hours=${2:-0.1}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
    mkdir -p /tmp/ds && tar -C /tmp/ds -xf .gpu/data.tar
    sed -i "s|^path: .*|path: /tmp/ds|" /tmp/ds/data.yaml
    cp .gpu/start.pt /tmp/start.pt
    PYTHONPATH=/tmp/site:$PWD/.gpu/stub:$PWD setsid nohup python3 -m export train --data /tmp/ds/data.yaml \
        --init /tmp/start.pt --run-dir "$RUN" --imgsz "${IMGSZ:-640}" --epochs 300 --batch "${BATCH:-64}" \
        --device "${DEVICE:-0}" --workers "${WORKERS:-14}" --optimizer AdamW --lr0 0.001 --warmup-epochs 1 --cos-lr \
        --close-mosaic 10 --patience 100 --time "$hours" >/tmp/train.log 2>&1 </dev/null &
    sleep "${SETTLE_S:-20}"
    tail -c 1500 /tmp/train.log
    ;;
wait)
    out=${2:?OUT folder}
    while pgrep -f "export train" >/dev/null; do sleep 5; done
    tail -c 3000 /tmp/train.log
    mkdir -p "$out"
    cp "$RUN/weights/best.pt" "$out/best.pt"
    cp "$RUN"/results.csv "$RUN"/args.yaml "$RUN"/train_summary.json /tmp/train.log "$out/" 2>/dev/null || true
    ;;
*)
    echo "usage: $0 start [HOURS] | wait OUT" >&2
    exit 2
    ;;
esac
