#!/usr/bin/env bash
# Build the workspace with Candle's `cuda` feature on a machine that has no GPU and no CUDA install,
# for the lent H100/H200 machines (driver 580, CUDA 13; PyTorch cu130 there ships the .so.13 libs).
#
#   scripts/cuda-toolchain.sh [cargo build args...]     e.g.  --release --features cuda,cudnn
#
# What it does (first run ~2 min of downloads, then Candle's kernels take ~10 min to compile):
#  1. puts the CUDA 13.0 compiler, headers and libraries from PyPI wheels into $AUE_CUDA_HOME
#     (nvcc 13.0: Candle's cudarc 0.19 rejects newer; kernels from a newer nvcc may not load on 580);
#  2. makes a link-time stub libcuda.so from the driver functions that cudarc declares (the real
#     one comes with the GPU driver; the stub only satisfies the linker);
#  3. runs cargo build with CUDA_HOME, CUDA_COMPUTE_CAP=90 (sm_90: H100/H200) and the library paths.
# On the GPU machine, run the binary with
#   LD_LIBRARY_PATH=$(python3 -c 'import nvidia,os;print(os.path.dirname(nvidia.__file__))')/cu13/lib:...cudnn/lib
# (torch's own CUDA libraries). Checked here on 2026-11-27: 12.7 min from clean for a crate on
# candle-core + candle-nn with `cuda`; the binary (53 MB, 5.4 MB after `xz -9`) needs libcuda.so.1,
# libcudart.so.13, libcublas.so.13, libcurand.so.10 (+ libcudnn.so.9 with cudnn). Not yet run on a GPU.
set -euo pipefail
T=${AUE_CUDA_HOME:-$HOME/.cache/aue-cuda13}
CU=$T/nvidia/cu13
if [ ! -x "$CU/bin/nvcc" ]; then
  python3 -m pip install -q --no-deps --target "$T" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 \
    nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
fi
if [[ " $* " == *cudnn* ]] && [ ! -d "$T/nvidia/cudnn" ]; then
  python3 -m pip install -q --no-deps --target "$T.cudnn" nvidia-cudnn-cu13==9.13.0.50
  cp -r "$T.cudnn/nvidia/cudnn" "$T/nvidia/"
fi
for l in cublas cublasLt cudart nvrtc curand; do
  f=$(ls "$CU/lib/lib$l.so."* 2>/dev/null | head -n1); [ -e "$CU/lib/lib$l.so" ] || ln -s "$(basename "$f")" "$CU/lib/lib$l.so"
done
if [ -d "$T/nvidia/cudnn/lib" ] && [ ! -e "$T/nvidia/cudnn/lib/libcudnn.so" ]; then
  ln -s "$(basename "$(ls "$T/nvidia/cudnn/lib/libcudnn.so."* | head -n1)")" "$T/nvidia/cudnn/lib/libcudnn.so"
fi
if [ ! -e "$CU/lib/stubs/libcuda.so" ]; then
  mkdir -p "$CU/lib/stubs"
  cargo fetch -q   # the stub is made from the driver declarations in the fetched cudarc source
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | tail -n1)
  grep -oP '^\s+fn \Kcu[A-Za-z0-9_]+(?=\()' "$src" | sort -u | sed 's/.*/void &(void){}/' > "$CU/lib/stubs/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/stub.c"
fi
export CUDA_HOME=$CU PATH=$CU/bin:$PATH CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export LIBRARY_PATH=$CU/lib:$CU/lib/stubs:$T/nvidia/cudnn/lib${LIBRARY_PATH:+:$LIBRARY_PATH}
exec cargo build "$@"
