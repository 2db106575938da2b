"""Write the trainer parity fixtures (docs/STAGES.md "Trainer parity") for aue-train's tests.

Outputs (relative to the repository root):
    crates/train/tests/fixtures/trainer_tiny.safetensors       preset tiny, S = 64, B = 4
    crates/train/tests/fixtures/trainer_resnet18.safetensors   preset resnet18, S = 64, B = 4

For each preset and each stage s = 1, 2, 3, the reference's own training code runs STEPS SGD steps
in float64 (model.double(), images double), dropout off:
    weights: the parity filler (aue_reference.fill_parity_: f32 values, widened), the same for
        every stage (the Rust side regenerates them and loads them as a stage checkpoint);
    every step: set_stage_mode(model, s), stage_forward_loss on batch (step % 2), zero_grad,
        backward, SGD(trainable_params(model, s), lr LR, momentum MOMENTUM).step(), then
        MultiStepLR(milestones [MILESTONE], gamma GAMMA).step(): steps 0..MILESTONE-1 use LR,
        the rest LR * GAMMA.
Weights are not stored. Tensors in each file:
    batch{k}.image f32 [B,3,S,S], batch{k}.au_loc i64 [B,17,4], batch{k}.label i64 [B] (k = 0, 1)
    s{s}.loss f64 [STEPS]: the loss of every step (computed before its update)
    per trainable parameter K, its change over the run (final - initial, f64):
        s{s}.delta.K (numel <= 4096), else s{s}.deltanorm.K (0-d) + s{s}.deltasample.K
        (64 values at flat indices floor(j * numel / 64))
    per BatchNorm layer P (frozen ones included, whose modes the stage sets):
        s{s}.bn.P.running_mean, s{s}.bn.P.running_var (f64, after the last step),
        s{s}.bn.P.num_batches_tracked (i64)
Stage-3 biases that feed a train-mode BatchNorm1d get a gradient that is zero in exact arithmetic
(rounding noise only): their change is stored as exact zeros and listed in the metadata
(`structural_zero_deltas`); compare them with an absolute bound.

Inputs: one torch.Generator seeded 0: per batch image = randn(B,3,S,S), au_loc =
aue_reference.random_au_loc, label = randint(0, 7, (B,)).

Run from the repository root:
    python3 tools/make_trainer_fixtures.py
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aue_reference as R  # noqa: E402
from make_parity_fixtures import atomic_save_safetensors  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "crates", "train", "tests", "fixtures")
PRESETS = ("tiny", "resnet18")
BATCH = 4
BATCHES = 2
INPUT_SIZE = 64
STEPS = 10
LR = 0.01
MOMENTUM = 0.9
MILESTONE = 5
GAMMA = 0.1
FULL_MAX = 4096
SAMPLES = 64
SIZE_LIMIT = 4 * 1024 * 1024
STRUCTURAL_ZERO = re.compile(r"^(fc_em_fuse_3\.1\.bias|fc_au_fuse_3\.\d+\.1\.bias)$")


def draw_batches():
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(BATCHES):
        image = torch.randn(BATCH, 3, INPUT_SIZE, INPUT_SIZE, generator=gen)
        au_loc = R.random_au_loc(BATCH, INPUT_SIZE, generator=gen)
        label = torch.randint(0, 7, (BATCH,), generator=gen)
        batches.append((image, au_loc.to(torch.int64), label))
    return batches


def train_stage(preset: str, stage: int, batches, dtype=torch.float64):
    """STEPS steps of `stage` from the parity weights; returns (model, initial state, losses)."""
    model = R.fill_parity_(R.build_model(preset, input_size=INPUT_SIZE, dropout=False)).to(dtype)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for _, p in R.trainable_params(model, stage)]
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[MILESTONE], gamma=GAMMA)
    losses = []
    for step in range(STEPS):
        image, au_loc, label = batches[step % BATCHES]
        R.set_stage_mode(model, stage)
        loss, _ = R.stage_forward_loss(model, stage, image.to(dtype), au_loc, label)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, initial, losses


def sample_index(numel: int) -> torch.Tensor:
    return torch.tensor([j * numel // SAMPLES for j in range(SAMPLES)])


def stage_tensors(preset: str, stage: int, batches) -> tuple[dict, list]:
    model, initial, losses = train_stage(preset, stage, batches)
    out = {f"s{stage}.loss": torch.tensor(losses, dtype=torch.float64)}
    zeros = []
    for name, p in R.trainable_params(model, stage):
        delta = (p.detach() - initial[name]).to(torch.float64).reshape(-1)
        if stage == 3 and STRUCTURAL_ZERO.match(name):
            noise = delta.norm().item()
            assert noise < 1e-14, f"s3 {name}: expected a structurally zero change, norm {noise:.2e}"
            delta = torch.zeros_like(delta)
            zeros.append(f"s{stage}.delta.{name}")
        if delta.numel() <= FULL_MAX:
            out[f"s{stage}.delta.{name}"] = delta.contiguous()
        else:
            out[f"s{stage}.deltanorm.{name}"] = delta.norm().reshape(())
            out[f"s{stage}.deltasample.{name}"] = delta[sample_index(delta.numel())].contiguous()
    state = model.state_dict()
    for prefix in sorted(R.bn_layers_of(state.keys())):
        for leaf in ("running_mean", "running_var"):
            out[f"s{stage}.bn.{prefix}.{leaf}"] = state[f"{prefix}.{leaf}"].to(torch.float64).contiguous()
        out[f"s{stage}.bn.{prefix}.num_batches_tracked"] = state[f"{prefix}.num_batches_tracked"].reshape(())
    print(f"  {preset} stage {stage}: losses " + ", ".join(f"{v:.6f}" for v in losses))
    return out, zeros


def build_fixture(preset: str) -> tuple[dict, dict]:
    batches = draw_batches()
    tensors = {}
    for k, (image, au_loc, label) in enumerate(batches):
        tensors[f"batch{k}.image"] = image.to(torch.float32).contiguous()
        tensors[f"batch{k}.au_loc"] = au_loc.contiguous()
        tensors[f"batch{k}.label"] = label.contiguous()
    zeros = []
    for stage in (1, 2, 3):
        t, z = stage_tensors(preset, stage, batches)
        tensors.update(t)
        zeros += z
    meta = {
        "preset": preset,
        "input_size": str(INPUT_SIZE),
        "batch": str(BATCH),
        "batches": str(BATCHES),
        "steps": str(STEPS),
        "lr": repr(LR),
        "momentum": repr(MOMENTUM),
        "lr_milestone_step": str(MILESTONE),
        "lr_gamma": repr(GAMMA),
        "compute": "float64; dropout off; parity-filler weights for every stage",
        "structural_zero_deltas": ",".join(zeros),
        "torch": torch.__version__,
        "script": "tools/make_trainer_fixtures.py",
    }
    return tensors, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=PRESETS)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(FIXTURES, exist_ok=True)
    for preset in args.presets:
        tensors, meta = build_fixture(preset)
        path = os.path.join(FIXTURES, f"trainer_{preset}.safetensors")
        atomic_save_safetensors(tensors, path, meta)
        print(f"  wrote {os.path.relpath(path, ROOT)}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")
    total = sum(os.path.getsize(os.path.join(FIXTURES, f"trainer_{p}.safetensors")) for p in PRESETS
                if os.path.exists(os.path.join(FIXTURES, f"trainer_{p}.safetensors")))
    print(f"trainer fixtures: total {total} bytes ({total / 2**20:.2f} MiB)")
    assert total <= SIZE_LIMIT, f"fixtures exceed {SIZE_LIMIT} bytes: {total}"


if __name__ == "__main__":
    main()
