# ScratchWatch developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SW := $(BIN)/scratchwatch

.PHONY: demo test setup setup-cpu setup-dev system-deps bench model model-v1 model-v4 gpu-bundle clean

# The lot-camera install: runtime only, no torch.
setup: $(VENV)/.runtime
$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

# A CPU-only lot camera: plain onnxruntime instead of onnxruntime-gpu (no 255 MB CUDA wheel).
setup-cpu:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-cpu.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(VENV)/.runtime

# Everything: runtime + training extra + test tools + PostgreSQL driver.
setup-dev: $(VENV)/.dev
$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[train,test,postgres]'
	touch $@ $(VENV)/.runtime

# System packages the tests use: PostgreSQL's server binaries (the tests start their own
# throwaway cluster), libGL for OpenCV, Chromium with its WebDriver for the web page's
# end-to-end test, systemd-analyze (the unit's hardening score) and ffmpeg (live streams on
# loopback). Installed only when missing.
system-deps:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libGL.so.1' \
		|| ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
		|| ! command -v systemd-analyze >/dev/null || ! command -v ffmpeg >/dev/null; then \
		echo "installing postgresql, libgl1, chromium, chromium-driver, systemd and ffmpeg (apt)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql libgl1 chromium chromium-driver systemd ffmpeg >/dev/null; \
	fi

# Main job on embedded defaults: the shipped model, the committed demo clip, SQLite under ./data.
demo: setup
	$(SW) replay demo/intel_car-detection.mp4
	$(SW) incidents list

test: system-deps setup-dev
	$(BIN)/python -m pytest -q

bench: setup-dev
	$(BIN)/python bench/bench_replay.py throughput
	$(BIN)/python bench/bench_replay.py latency
	$(BIN)/python bench/bench_query.py

# Reproduce the shipped models from ../shared (2 CPU cores: about 2 h, most of it the fine-tune,
# capped by --time; a rerun after an interruption resumes): hard-negative frames from the first
# part of two clips (the rest stays unseen for the false-alarm test), the v2 data set, a 480 px
# fine-tune that starts from the v1 model's ONNX file, export with parity, the car stage, and the
# evaluation with the threshold sweep on held-out footage that chose THRESHOLD (models/MODEL_CARD.md).
# `make model-v1` is the v1 chain (320 px from COCO, then 480 px), which `model` starts from.
SHARED_DATA := ../shared/datasets
VIDEOS := ../shared/videos
MODEL_V1 := models/scratchwatch-yolov5n-480.onnx
MODEL_V2 := models/scratchwatch-v2-yolov5n-480.onnx
RUN_V2 := runs/train/scratchwatch-v2-480
HELDOUT := runs/heldout
THRESHOLD ?= 0.5
model: setup-dev
	$(SW) dataset frames $(VIDEOS)/intel_car-detection.mp4 --out datasets/lot-negatives --end 15 --every 0.5
	$(SW) dataset frames $(VIDEOS)/udacity_lanelines_solidWhiteRight.mp4 --out datasets/lot-negatives --end 4.4 --every 0.5
	$(SW) dataset build $(SHARED_DATA)/seed-scratch $(SHARED_DATA)/lensor-damage $(SHARED_DATA)/more-damage \
		$(SHARED_DATA)/undamaged-cars datasets/lot-negatives --out datasets/scratch-v2
	$(SW) train --data datasets/scratch-v2/data.yaml --init $(MODEL_V1) --run-dir $(RUN_V2) --imgsz 480 --epochs 20 \
		--optimizer AdamW --lr0 0.0005 --warmup-epochs 0.5 --cos-lr --close-mosaic 3 --patience 12 --time 1.85
	$(SW) export --checkpoint $(RUN_V2)/weights/best.pt --data datasets/scratch-v2 --out $(MODEL_V2) --threshold $(THRESHOLD)
	$(SW) car-model
	$(SW) dataset clips $(VIDEOS)/intel_car-detection.mp4 --from 15 --out $(HELDOUT)
	$(SW) dataset clips $(VIDEOS)/udacity_lanelines_solidWhiteRight.mp4 --from 4.4 --out $(HELDOUT)
	$(SW) evaluate $(MODEL_V2) datasets/scratch-v2 --clips $(HELDOUT)/*.mp4 $(VIDEOS)/udacity_vehicle-detection_test_video.mp4 \
		--sweep 0.3 0.4 0.5 0.6 0.7

# v4, the shipped damage model: v2 and v3 (the GPU run's export, `scratchwatch export --imgsz 640`),
# each with its mirrored view, averaged anchor by anchor in one graph; threshold chosen on val
# (models/MODEL_CARD.md), test metrics embedded.
MODEL_V4 := models/scratchwatch-v4-ensemble-480.onnx
model-v4: setup-dev
	@test -n "$(V3)" || { echo "make model-v4 V3=path/to/scratchwatch-v3-yolov5n-640.onnx"; exit 1; }
	$(SW) ensemble $(MODEL_V4) $(MODEL_V2) $(V3) --flip --data datasets/scratch-v2
	$(SW) evaluate $(MODEL_V4) datasets/scratch-v2 --split val --choose 0.6 --embed --out runs/eval/v4-choose \
		--clips $(HELDOUT)/*.mp4 $(VIDEOS)/udacity_vehicle-detection_test_video.mp4
	$(SW) evaluate $(MODEL_V4) datasets/scratch-v2 --clips $(HELDOUT)/*.mp4 $(VIDEOS)/udacity_vehicle-detection_test_video.mp4 \
		--sweep 0.25 0.29 0.3 0.31 0.32 0.35 0.4 0.5

MODEL_320 := runs/train/scratchwatch-yolov5n-320
MODEL_480 := runs/train/scratchwatch-yolov5n-480
# What export/gpu_train.sh needs on a lent GPU machine, in .gpu/ (git-ignored locally; each device
# call carries at most 64 MiB with the working tree): the v2 data plus the photo gate's car crops,
# as WebP; the v2 run's checkpoint to fine-tune; wheels for the machine's Python 3.12 (needs the
# package index). Runs after `make model` (datasets/scratch-v2 and its run).
PY312_WHEEL := --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-bundle: setup-dev
	$(SW) dataset crops datasets/scratch-v2 --out datasets/scratch-v3
	rm -rf runs/compact-v3 .gpu/data.tar && mkdir -p .gpu/whl .gpu/stub/polars
	$(SW) dataset compact datasets/scratch-v3 --out runs/compact-v3 --max-side 720 --quality 74
	tar -C runs/compact-v3 -cf .gpu/data.tar .
	cp $(RUN_V2)/weights/best.pt .gpu/start.pt
	$(BIN)/pip download -q $(PY312_WHEEL) -d .gpu/whl ultralytics==8.4.190 ultralytics-thop==2.2.3 \
		pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions
	printf 'def read_csv(*a, **k):\n    raise RuntimeError("polars is not installed here")\n' > .gpu/stub/polars/__init__.py

model-v1: setup-dev
	$(SW) dataset build
	$(SW) train --epochs 60 --run-dir $(MODEL_320)
	$(SW) train --init $(MODEL_320)/weights/best.pt --run-dir $(MODEL_480) --imgsz 480 --epochs 32 \
		--optimizer AdamW --lr0 0.0005 --warmup-epochs 0.5 --cos-lr --close-mosaic 5 --patience 12
	$(SW) export --checkpoint $(MODEL_480)/weights/best.pt --threshold 0.65 --out $(MODEL_V1)

clean:
	rm -rf $(VENV) data .pytest_cache
