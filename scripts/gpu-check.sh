#!/usr/bin/env bash
# The GPU check: aue on CUDA against aue on the CPU and against the PyTorch reference on the same
# card, in one run that builds nothing. Prints a report and writes it, with every log, to OUT_DIR.
#
#   bash scripts/gpu-check.sh [BIN_DIR] [OUT_DIR]        # on the GPU machine, repository root
#
# OUT_DIR gets the report and a few logs (at most 8 files, for the device tool's $OUT, which is
# the default when set); the weights, data and runs go to AUE_CHECK_WORK (/tmp/aue-gpu-check).
# BIN_DIR (default gpu-bin) holds the CUDA builds of aue-forward, aue-bench, aue-stage1..3 and
# aue-synth, plain or xz-compressed; scripts/gpu-build.sh makes them on a machine without a GPU.
# The machine needs python3 with torch (CUDA) and safetensors, and nvidia-smi.
#
# What it checks (docs/PERFORMANCE.md, "CUDA"):
#  1. forward: tools/check_forward.py runs aue-forward on the GPU on a random full-size resnet101
#     (B=4, S=224) against PyTorch in float64; the same weights and inputs through aue-forward on
#     the CPU and on the GPU with TF32 forced off (NVIDIA_TF32_OVERRIDE=0) give the GPU-vs-CPU
#     error and TF32's part of it;
#  2. speed: aue-bench, resnet101, batch 64, S=224, each stage's training step and inference,
#     aue and PyTorch one after the other: ms per step, images/s, the card's memory, the loss of
#     the first and last of the 7 steps (on one fixed batch it must fall);
#  3. the stage binaries: a synthetic set, then stages 1 -> 2 -> 3 with resnet101 on the GPU for
#     a few steps each (loss finite, checkpoints handed on).
#
# Knobs (environment): AUE_CHECK_DEVICE (cuda), AUE_CHECK_PRESET (resnet101), AUE_CHECK_BATCH
# (64), AUE_CHECK_REPS (5). A CPU rehearsal of the script's plumbing, on a machine without a GPU:
#   AUE_CHECK_DEVICE=cpu AUE_CHECK_PRESET=tiny AUE_CHECK_BATCH=8 AUE_CHECK_REPS=2 \
#     bash scripts/gpu-check.sh target/release /tmp/gpu-check
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-gpu-bin}
OUT=${2:-${OUT:-gpu-out}}
DEV=${AUE_CHECK_DEVICE:-cuda}
PRESET=${AUE_CHECK_PRESET:-resnet101}
BATCH=${AUE_CHECK_BATCH:-64}
REPS=${AUE_CHECK_REPS:-5}
THREADS=$(nproc)
WORK=${AUE_CHECK_WORK:-/tmp/aue-gpu-check}
mkdir -p "$OUT" "$WORK"
REPORT=$OUT/gpu-check.md
: > "$REPORT"
say() { echo "$*" | tee -a "$REPORT"; }
fail=0
t_start=$(date +%s)

# The binaries, decompressed where needed.
for f in "$BIN"/*.xz; do
  [ -e "$f" ] || continue
  # xz where there is one, else Python's lzma.
  xz -dc "$f" > "${f%.xz}" 2>/dev/null \
    || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$f" "${f%.xz}"
  chmod +x "${f%.xz}"
done
for b in aue-forward aue-bench aue-stage1 aue-stage2 aue-stage3 aue-synth; do
  if [ ! -x "$BIN/$b" ]; then echo "error: $BIN/$b missing (see scripts/gpu-build.sh)" >&2; exit 2; fi
done

if [ "$DEV" != cpu ]; then
  # The binaries link libcudart / libcublas / libcurand / libcudnn of CUDA 13: the ones PyTorch's
  # wheels ship (nvidia-* packages), as scripts/cuda-toolchain.sh says.
  NV=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__file__))' 2>/dev/null || true)
  if [ -n "$NV" ]; then
    export LD_LIBRARY_PATH="$NV/cu13/lib:$NV/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  say "# aue GPU check ($(date -u +%F), $PRESET, device $DEV)"
  say ""
  say '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$REPORT"
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())' 2>&1 | tee -a "$REPORT"
  say '```'
else
  say "# aue GPU check: CPU rehearsal ($PRESET)"
fi

# 1. Forward pass against PyTorch (float64) and against aue on the CPU.
say ""
say "## 1. Forward pass ($PRESET, B=4, S=224 or the preset's)"
say ""
FWD=$WORK/forward
mkdir -p "$FWD"
say '```'
python3 tools/check_forward.py --preset "$PRESET" --batch 4 --threads "$THREADS" \
  --binary "$BIN/aue-forward" --forward-args "--device $DEV" --workdir "$FWD" \
  > "$OUT/check_forward.log" 2>&1
rc=$?
grep -A20 "^output" "$OUT/check_forward.log" | tee -a "$REPORT"
[ $rc -eq 0 ] || { fail=1; tail -5 "$OUT/check_forward.log" | tee -a "$REPORT"; }
say '```'
if [ -f "$FWD/O.safetensors" ]; then
  mv "$FWD/O.safetensors" "$FWD/O_dev.safetensors"
  "$BIN/aue-forward" --weights "$FWD/W.safetensors" --inputs "$FWD/I.safetensors" \
    --out "$FWD/O_cpu.safetensors" --preset "$PRESET" --device cpu > "$WORK/cpu.log" 2>&1 || fail=1
  if [ "$DEV" != cpu ]; then
    NVIDIA_TF32_OVERRIDE=0 "$BIN/aue-forward" --weights "$FWD/W.safetensors" \
      --inputs "$FWD/I.safetensors" --out "$FWD/O_notf32.safetensors" --preset "$PRESET" \
      --device "$DEV" > "$WORK/notf32.log" 2>&1 || fail=1
  fi
  say ""
  say "aue on $DEV against aue on the CPU (same weights and inputs), relative L2:"
  say ""
  python3 - "$FWD" <<'EOF' 2>&1 | tee -a "$REPORT"
import os, sys
from safetensors.torch import load_file
d = sys.argv[1]
cpu = load_file(os.path.join(d, "O_cpu.safetensors"))
runs = [("default", "O_dev.safetensors"), ("NVIDIA_TF32_OVERRIDE=0", "O_notf32.safetensors")]
runs = [(n, load_file(os.path.join(d, f))) for n, f in runs if os.path.exists(os.path.join(d, f))]
print("| output | " + " | ".join(n for n, _ in runs) + " |")
print("|---|" + "---:|" * len(runs))
for k in sorted(cpu):
    a = cpu[k].double()
    errs = []
    for _, o in runs:
        b = o[k].double()
        errs.append(f"{((b - a).norm() / a.norm().clamp_min(1e-30)).item():.2e}")
    print(f"| {k} | " + " | ".join(errs) + " |")
EOF
fi

# 2. Training steps and inference: aue against PyTorch on the same card.
say ""
say "## 2. Steps: $PRESET, batch $BATCH, S=224, $REPS timed after 2 warm-up"
say ""
"$BIN/aue-bench" --device "$DEV" --preset "$PRESET" --batch "$BATCH" --threads "$THREADS" \
  --reps "$REPS" --warmup 2 --tools tools --out "$OUT/bench.md" > "$OUT/bench.log" 2>&1 || fail=1
if [ -f "$OUT/bench.md" ]; then tee -a "$REPORT" < "$OUT/bench.md"; else tail -20 "$OUT/bench.log" | tee -a "$REPORT"; fi

# 3. The stage binaries on a synthetic set.
say ""
say "## 3. Stages 1 -> 2 -> 3 ($PRESET on $DEV, a few steps each)"
say ""
DATA=$WORK/synth
RUN=$WORK/runs
"$BIN/aue-synth" --out "$DATA" --train 384 --test 128 --seed 0 --size 224 > "$WORK/synth.log" 2>&1 || fail=1
common=(--dataset rafdb --data-root "$DATA" --preset "$PRESET" --device "$DEV" --run-dir "$RUN"
        --epochs 2 --max-steps 3 --train-batch-size "$BATCH" --test-batch-size "$BATCH" --overwrite)
say '```'
for n in 1 2 3; do
  t0=$(date +%s)
  "$BIN/aue-stage$n" "${common[@]}" > "$OUT/stage$n.log" 2>&1
  rc=$?
  grep -E "epoch [0-9]+/[0-9]+ (lr|test)|error" "$OUT/stage$n.log" | sed 's/^[^ ]* *INFO //' | cut -c1-160 | tee -a "$REPORT"
  say "stage $n: exit $rc, $(( $(date +%s) - t0 )) s"
  [ $rc -eq 0 ] || fail=1
done
say '```'

say ""
say "total $(( $(date +%s) - t_start )) s; $([ $fail -eq 0 ] && echo 'every part ran' || echo 'SOME PART FAILED: see the logs in '"$OUT")"
exit $fail
