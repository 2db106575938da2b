#!/usr/bin/env bash
# Builds the CUDA binaries that scripts/gpu-check.sh runs, on a machine without a GPU or a CUDA
# install, with scripts/cuda-toolchain.sh (CUDA 13.0 from PyPI wheels, a link-time driver
# stub; about 12 minutes from clean on 2 cores), into target/cuda, and puts them, stripped of
# their line tables and xz-compressed (about 7 MB each) so that all of them fit the 64 MiB a
# device run carries, into gpu-bin/ (git-ignored).
#
#   bash scripts/gpu-build.sh            # then run scripts/gpu-check.sh on the GPU machine
#                                        # (carry gpu-bin)
# With a normal CUDA toolkit (nvcc on PATH, CUDA_HOME set) `cargo build --release --features
# cuda,cudnn` is all a user needs; this script is for building elsewhere than where it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${AUE_CUDA_BUILD:-scripts/cuda-toolchain.sh}
BINS=(aue-forward aue-bench aue-stage1 aue-stage2 aue-stage3 aue-synth)
CARGO_TARGET_DIR=target/cuda bash "$BUILD" --release --features cuda,cudnn \
  -p aue-model -p aue-bench -p aue-stage1 -p aue-stage2 -p aue-stage3 -p aue-synth
mkdir -p gpu-bin
for b in "${BINS[@]}"; do
  strip -o "gpu-bin/$b" "target/cuda/release/$b"
  xz -9 -T0 -f "gpu-bin/$b"
done
ls -l gpu-bin
du -ch gpu-bin/*.xz | tail -1
