# One command from nothing: `make demo`, `make test`. Every target sets up .venv first if needed.
SHELL := /bin/bash
PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
# torch/torchvision for the CPU set-up (taken from local disk where available, PyPI elsewhere).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

DATASET ?= synthetic
SPLIT ?=
CONFIG ?= configs/tiny_synthetic.yaml
MODEL ?= data/runs/train/final
# passed through the environment so quotes and $ in a query survive
export VIDEO QUERY
PREDICT_MODEL := $(if $(filter command line,$(origin MODEL)),$(MODEL))
export PREDICT_MODEL
ARGS ?=

export YOLO_OFFLINE := 1
export YOLO_CONFIG_DIR := $(CURDIR)/data/cache/ultralytics
export MPLCONFIGDIR := $(CURDIR)/data/cache/matplotlib
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup test test-slow test-gpu lint format demo synthetic detector preprocess tiny train eval predict notebooks bench figures clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ray]' $(TORCH_PINS)
	@# Ultralytics pulls GUI opencv-python beside the headless wheel; both own cv2/. Keep exactly one: headless.
	$(PY) -m pip uninstall -q -y opencv-python opencv-python-headless
	$(PY) -m pip install -q --no-deps "opencv-python-headless>=4.10"
	$(PY) -c "import cv2, numpy as np; ok, buf = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8)); assert ok"
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install everything (CPU)

test: $(STAMP)  ## fast CPU test tier (no network, < 10 min)
	$(PY) -m pytest -q

test-slow: $(STAMP)  ## slow CPU tests (detector training, longer GRPO runs)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)  ## CUDA / vLLM tests (needs a GPU and `pip install -e '.[gpu]'`)
	$(PY) -m pytest -q -m gpu

lint: $(STAMP)  ## ruff check + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)  ## apply ruff fixes and formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

synthetic: $(STAMP)  ## generate the synthetic dataset (MeViS, HC-STVG, YOLO formats) and the harder ID-stability split
	$(PY) -m pipeline.synthetic --out data/raw/synthetic $(ARGS)
	$(PY) -m pipeline.synthetic.hard --out data/raw/synthetic-hard

DET_RUNS := data/runs/detector
detector: $(STAMP)  ## retrain the committed synthetic detector: 3 detection stages, then segmentation; about 1.5 h on 2 CPU cores
	$(PY) -m pipeline.synthetic --out data/raw/synthetic
	$(PY) -m pipeline.synthetic --out data/raw/synthetic-det1200 --formats yolo --det-train 1200 --det-val 80
	$(PY) -m pipeline.synthetic.train_detector --epochs 30 --imgsz 192 \
	  --out $(DET_RUNS)/stage1.pt --run-dir $(DET_RUNS)/stage1
	$(PY) -m pipeline.synthetic.train_detector --init $(DET_RUNS)/stage1.pt --epochs 20 --imgsz 320 \
	  --close-mosaic 10 --out $(DET_RUNS)/stage2.pt --run-dir $(DET_RUNS)/stage2
	$(PY) -m pipeline.synthetic.train_detector --data data/raw/synthetic-det1200/yolo/data.yaml \
	  --init $(DET_RUNS)/stage2.pt --epochs 15 --imgsz 320 --close-mosaic 5 \
	  --out $(DET_RUNS)/stage3.pt --run-dir $(DET_RUNS)/stage3
	$(PY) -m pipeline.synthetic.train_detector --data data/raw/synthetic-det1200/yolo/data.yaml \
	  --segment --init $(DET_RUNS)/stage3.pt --epochs 10 --imgsz 320 --close-mosaic 4 \
	  --run-dir $(DET_RUNS)/segment $(ARGS)

preprocess: $(STAMP)  ## DATASET=<name> SPLIT=<split> (default train): detect, track, overlay IDs, write shards
	@if [[ "$(DATASET)" == synthetic* ]]; then $(PY) -m pipeline.synthetic --out data/raw/synthetic; fi
	$(PY) -m pipeline.preprocess --dataset $(DATASET) --split $(or $(SPLIT),train) $(ARGS)

tiny: $(STAMP)  ## build the tiny offline Qwen2.5-VL into data/models/tiny-qwen2.5-vl
	$(PY) -m trainer.tiny $(ARGS)

train: $(STAMP)  ## CONFIG=<yaml>: GRPO training (default: tiny model on synthetic shards, CPU)
	@if [[ "$(CONFIG)" == *tiny* ]]; then $(PY) -m trainer.tiny; fi
	$(PY) -m trainer.train --config $(CONFIG) $(ARGS)

eval: $(STAMP)  ## MODEL=<path|hub id|oracle|largest|random> DATASET= SPLIT= (default: the dataset's last split): metrics.json + table
	$(PY) -m trainer.evaluate --model "$(MODEL)" --dataset $(DATASET) $(if $(SPLIT),--split $(SPLIT)) $(ARGS)

predict: $(STAMP)  ## VIDEO=<path> QUERY="..." [MODEL=<path>]: ground a query in any video, write a highlighted mp4
	@test -n "$$VIDEO" -a -n "$$QUERY" || { echo 'usage: make predict VIDEO=path/to/video.mp4 QUERY="the red circle that stops" [MODEL=path]'; exit 2; }
	$(PY) -m trainer.predict --video "$$VIDEO" --query "$$QUERY" $(if $(PREDICT_MODEL),--model "$$PREDICT_MODEL") $(ARGS)

notebooks: $(STAMP)  ## open Jupyter on notebooks/ (installs the `notebooks` extra)
	$(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)  ## benchmarks: ratios against a baseline measured in the same run
	$(PY) bench/preprocess.py
	$(PY) bench/tracking.py
	$(PY) bench/trainer.py

demo: $(STAMP)  ## end to end on the synthetic default: data, preprocess, train, eval, videos
	$(PY) -m trainer.demo $(ARGS)

figures: $(STAMP)  ## regenerate the README images from the synthetic shards
	$(PY) -m pipeline.views.figures --out docs/img

clean:  ## remove generated data and runs (keeps .venv)
	rm -rf data/raw/synthetic data/raw/synthetic-hard data/shards data/runs data/models/tiny-qwen2.5-vl outputs
