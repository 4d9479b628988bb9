#!/usr/bin/env bash
# The GPU pipeline's check on a CUDA machine (written for one H200): the benchmark, then the CUDA test.
#
#   bash benchmarks/device_gpu_pipeline.sh        # from the checkout's root; about 2-3 minutes
#
# Installs nothing: it needs python3 with torch, torchvision (nvJPEG), Pillow, NumPy and SciPy, and runs
# the package from this checkout (PYTHONPATH), so a bare, offline machine will do. Without open_clip the
# random weights are the image tower alone (tests/random_clip.py: build_random_tower); without pyiqa the
# reference is the package's standard fp32 path.
#
# Images: CLIVE at shared/data/clive/images inside the checkout (the ../shared beside a checkout does not
# travel to a device machine; copy it in first, 23 MB, and keep git from seeing it):
#   mkdir -p shared/data/clive && cp -r ../shared/data/clive/images shared/data/clive/
#   mkdir -p "$(git rev-parse --git-dir)/info" && echo /shared/ >> "$(git rev-parse --git-dir)/info/exclude"
# Without them the benchmark scores generated JPEGs of CLIVE's size instead (and says so).
#
# Writes to $OUT (default benchmarks/results): gpu_pipeline_cuda.json, bench_gpu_pipeline.log and
# test_batch_cuda.log. Exit code: the benchmark's (1 when fp32 parity failed), else the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

python3 -c 'import sys, torch, torchvision, PIL; print(sys.version.split()[0], "torch", torch.__version__,
"torchvision", torchvision.__version__, "Pillow", PIL.__version__, "cuda", torch.cuda.is_available())'
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
df -h /dev/shm | tail -1 || true  # the readers hand decoded images over in shared memory
nproc

timeout 330 python3 benchmarks/bench_gpu_pipeline.py --device cuda --output "$out/gpu_pipeline_cuda.json" 2>&1 \
    | tee "$out/bench_gpu_pipeline.log"
bench=$?
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_batch.py -k nvjpeg -rA 2>&1 \
    | tee "$out/test_batch_cuda.log"
tests=$?
echo "benchmark exit $bench, CUDA test exit $tests"
[ "$bench" -ne 0 ] && exit "$bench"
exit "$tests"
