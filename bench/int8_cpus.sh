#!/usr/bin/env bash
# The INT8 model on this CPU and on an emulated Haswell (AVX2, no VNNI), where
# onnxruntime's fused integer kernels saturate 8-bit weights (see bench/int8_cpus.py).
# usage: bench/int8_cpus.sh MODEL_int8.onnx DATASET_PREFIX   (qemu: apt-get install qemu-user)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
echo "== this CPU: VNNI $(grep -q -E 'avx512_vnni|avx_vnni' /proc/cpuinfo && echo yes || echo no)"
$PY -m bench.int8_cpus "$1" "$2"
if command -v qemu-x86_64 > /dev/null; then
    echo "== emulated Haswell: AVX2, no VNNI"
    qemu-x86_64 -cpu Haswell "$PY" -m bench.int8_cpus "$1" "$2" 2> /dev/null
else
    echo "(no qemu-x86_64: install qemu-user to check a CPU without VNNI)"
fi
