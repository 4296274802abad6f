#!/usr/bin/env bash
# Compile-checks (or builds) qforge with `--features cuda` on a machine without a GPU, with the
# CUDA 13.0 toolkit taken from pinned PyPI wheels (no root, no Debian CUDA packages).
#
#   tools/cuda/check_build.sh [check|build]   # default: check
#
# `check` type-checks every crate against candle's CUDA backend (its build scripts still
# compile candle's PTX kernels: ~8 min on 2 cores). `build` also links a release binary in
# target/cuda/release/qforge; for that, libcuda (which only a driver provides) is replaced by a
# link-time stub generated from cudarc's own bindings. Pins and the why of each step:
# the CUDA notes in ARCHITECTURE.md.
set -euo pipefail
mode=${1:-check}
root=$(cd "$(dirname "$0")/../.." && pwd)
tk=${QFORGE_CUDA_TOOLKIT:-$root/target/cuda-toolkit}

if [ ! -d "$tk/venv" ]; then
  python3 -m venv "$tk/venv"
  # Exact pins: newer nvcc emits PTX that driver 580 cannot load, and cudarc 0.19 knows
  # CUDA versions up to 13.4 only.
  "$tk/venv/bin/pip" install -q --no-deps nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35
fi
cu=$(echo "$tk"/venv/lib/python3*/site-packages/nvidia/cu13)
# The wheels ship only versioned sonames; the linker wants the plain names.
(cd "$cu/lib" && for l in cublas cublasLt nvrtc cudart; do ln -sf "lib$l.so.13" "lib$l.so"; done \
  && ln -sf libcurand.so.10 libcurand.so)
if [ "$mode" = build ] && [ ! -f "$cu/lib/stubs/libcuda.so" ]; then
  (cd "$root" && cargo fetch -q)
  mkdir -p "$cu/lib/stubs"
  bindings=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1)
  grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$bindings" \
    | awk '{print "int "$4"(void){return 999;}"}' | sort -u > "$cu/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/libcuda_stub.c"
fi

export CUDA_ROOT=$cu PATH=$cu/bin:$PATH CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=$root/target/cuda
cd "$root"
case $mode in
  check) cargo check --workspace --all-targets --features qforge/cuda ;;
  build) cargo build --release -p qforge --features cuda ;;
  *) echo "usage: $0 [check|build]" >&2; exit 2 ;;
esac
