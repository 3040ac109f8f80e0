#!/usr/bin/env bash
# Everything the GPU machine checks, in one go (it has torch, onnx, onnxruntime; no ROOT/Ray).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m bench.gpu_check
python3 -m bench.bench_training throughput --synthetic --device cuda --epochs 10
python3 -m bench.bench_training throughput --synthetic --device cuda --epochs 10 --eager
python3 -m bench.bench_training throughput --synthetic --device cuda --epochs 10 --share 4
python3 -m bench.bench_training throughput --synthetic --device cpu --epochs 3
python3 -m pytest -q -p no:cacheprovider tests/test_models.py
