# aue: AUE-CRL facial expression recognition on Candle.
# Every recipe is a thin wrapper around cargo; `just --list` shows them, and extra arguments go
# to the binary, e.g. `just stage1 --data-root data/rafdb --pretrained resnet101-63fe2227.pth`.
# Stages 2 and 3 start from the previous stage's best.safetensors in the same --run-dir, or from
# any checkpoint given with --resume-model FILE.
# Get just with: cargo install --locked just

set positional-arguments

# List the recipes.
default:
    @just --list

# Stage 1 (EM): backbone + expression branch (flags: just stage1 --help).
stage1 *args:
    cargo run --release -p aue-stage1 -- "$@"

# Stage 2 (AU): AU branch + prior table on the frozen backbone, from stage 1's best.
stage2 *args:
    cargo run --release -p aue-stage2 -- "$@"

# Stage 3 (Fuse): fusion branch + EM head, from stage 2's best.
stage3 *args:
    cargo run --release -p aue-stage3 -- "$@"

# Synthetic faces (data/synth unless present), then stages 1 -> 2 -> 3, tiny preset, CPU.
demo:
    cargo build --release -p aue-synth -p aue-stage1 -p aue-stage2 -p aue-stage3
    [ -f data/synth/basic/EmoLabel/list_patition_label.txt ] || cargo run --release -p aue-synth -- --out data/synth --train 1500 --test 400 --seed 0 --difficulty easy --balance uniform
    cargo run --release -p aue-stage1 -- --config crates/train/demo/stage1.toml --overwrite
    cargo run --release -p aue-stage2 -- --config crates/train/demo/stage2.toml --overwrite
    cargo run --release -p aue-stage3 -- --config crates/train/demo/stage3.toml --overwrite

# Stage 1 alone against stages 1 -> 2 -> 3 over seeds and synthetic sets (docs/ABLATION.md), CPU,
# tiny preset, under an hour on 2 cores; `just ablation --quick` is a smoke run.
ablation *args:
    cargo build --release -p aue-synth -p aue-stage1 -p aue-stage2 -p aue-stage3 -p aue-report
    cargo run --release -p aue-report --bin aue-ablation -- "$@"

# The report: the paper's tables beside ours, curves, confusion matrices (default: the demo's runs).
report *args:
    if [ "$#" -eq 0 ]; then set -- --run checkpoints/demo; fi; cargo run --release -p aue-report -- "$@"

# The checks and the test suite, as CI runs them.
test:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --release -- -D warnings
    cargo test --workspace --release

# Flags go to aue-bench; it needs python3 with torch, or --no-torch. Results: docs/PERFORMANCE.md.
# Step times of each stage and of inference, aue against PyTorch on this machine.
bench *args:
    cargo run --release -p aue-bench -- "$@"

# The data loader benchmark of aue-data (flags go to aue-loader-bench).
bench-loader *args:
    cargo run --release -p aue-data --bin aue-loader-bench -- "$@"

# The convolution benchmark of aue-kernels against Candle's own (flags go to aue-conv-bench).
bench-conv *args:
    cargo run --release -p aue-kernels --bin aue-conv-bench -- "$@"
