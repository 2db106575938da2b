"""PyTorch side of `aue-bench` (crates/bench): times training steps and inference of the reference.

Started by `aue-bench` as a worker process, one per (mode, thread count); not meant to be run by
hand. It builds the reference model of `aue_reference.py`, loads the same weights and inputs as the
Candle worker (safetensors files written by `aue-bench`) and then answers, one line each:

    step   -> "t <seconds> <loss>"  one training step (or one inference pass) on the fixed inputs
    quit   -> "peak <bytes>"    the process's peak resident memory, then exit

A training step is the reference's: set_stage_mode, the stage's forward and loss (frozen parts under
no_grad), zero_grad, backward, SGD(momentum 0.9) step. Inference is model.eval() and the full forward
under no_grad. Before "ready" it prints the resident memory after imports, before the model exists.
"""

import argparse
import gc
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def reset_peak() -> None:
    """Restart the peak count at the current size (Linux: 5 > /proc/self/clear_refs resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes() -> int:
    """Peak resident set size: VmHWM (honours reset_peak), else ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=["stage1", "stage2", "stage3", "eval"], required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f32",
                    help="float type of the model and the images (f64: the f32 weights widened)")
    ap.add_argument("--no-dropout", action="store_true",
                    help="dropout off (parity runs of stages 2 and 3, as aue's --dev-no-dropout)")
    ap.add_argument("--nudge", action="store_true",
                    help="multiply the images by (1 + one unit in the last place of the dtype): the "
                         "control run of tools/trainer_parity_resnet101.py")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    import aue_reference as R

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    baseline = rss_bytes()

    device = torch.device(args.device)
    inputs = {k: v.to(device) for k, v in load_file(args.inputs).items()}
    image, au_loc, label = inputs["image"], inputs["au_loc"], inputs["label"]
    size = image.shape[-1]
    weights = load_file(args.weights)
    classes = weights["pred_em.bias"].shape[0]
    model = R.build_model(args.preset, num_classes=classes, input_size=size, dropout=not args.no_dropout)
    model.load_state_dict(weights, strict=True)
    del weights
    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    model.to(device=device, dtype=dtype)
    image = image.to(dtype)
    if args.nudge:
        image = image * (1 + torch.finfo(dtype).eps)

    if args.mode == "eval":
        model.eval()

        def step():
            with torch.no_grad():
                out = model(image, au_loc)
            return out["pred2"]

    else:
        stage = int(args.mode[-1])
        params = [p for _, p in R.trainable_params(model, stage)]
        for name, p in model.named_parameters():
            p.requires_grad_(R._trainable_name(name, stage))
        opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9)

        def step():
            R.set_stage_mode(model, stage)
            loss, _ = R.stage_forward_loss(model, stage, image, au_loc, label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

    gc.collect()
    reset_peak()  # the peak counts from here: the steps with the model resident, not the loading
    print(f"ready {baseline} torch={torch.__version__}", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t = time.perf_counter()
            out = step()
            loss = float(out.detach().sum())  # reading it waits for the device, as a training loop logging its loss does
            print(f"t {time.perf_counter() - t:.6f} {loss!r}", flush=True)
        elif cmd == "quit":
            print(f"peak {peak_bytes()}", flush=True)
            return
        else:
            print(f"error unknown command {cmd!r}", flush=True)
            return


if __name__ == "__main__":
    main()
