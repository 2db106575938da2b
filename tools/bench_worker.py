"""PyTorch side of `aue-bench` (crates/bench): times training steps and inference of the reference.

Started by `aue-bench` as a worker process, one per (mode, thread count); not meant to be run by
hand. It builds the reference model of `aue_reference.py`, loads the same weights and inputs as the
Candle worker (safetensors files written by `aue-bench`) and then answers, one line each:

    step   -> "t <seconds> <loss>"  one training step (or one inference pass) on the fixed inputs
    quit   -> "peak <bytes>"    the process's peak resident memory, then exit

A training step is the reference's: set_stage_mode, the stage's forward and loss (frozen parts under
no_grad), zero_grad, backward, SGD(momentum 0.9) step. Inference is model.eval() and the full forward
under no_grad. Before "ready" it prints the resident memory after imports, before the model exists.

With --authors DIR it times the authors' released code instead (HCPLab-SYSU/AUE-CRL, not shipped
here: DIR is a checkout of it): their model.py (`ResNet101(Dim)`), loss.py and utils.py
(`Set_Param_Optim`, `Set_Criterion_Optimizer`) imported unchanged, and one iteration of the loop
body of main.py's `Train()` per step (model.train(), the backbone in eval mode for 'Fuse', the AU
target from `get_au_target`, the stage's loss as main.py sums it, zero_grad, backward, SGD step);
inference is their 'Fuse' forward in eval mode under no_grad. Their code calls `.cuda()` on the
tensors it creates; on the CPU that call is made a no-op. Their model.py uses `pad` and
`avg_pool3d` without importing them; torch.nn.functional's are put into its namespace.
ResNet-101 only (their model class), float32 (float64 for stage 1, whose path creates no tensor of
its own).
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


def reference_step(args, weights, image, au_loc, label, device, dtype):
    """The step function of aue_reference.py's model (see the module doc)."""
    import torch

    import aue_reference as R

    size = image.shape[-1]
    classes = weights["pred_em.bias"].shape[0]
    model = R.build_model(args.preset, num_classes=classes, input_size=size, dropout=not args.no_dropout)
    model.load_state_dict(weights, strict=True)
    weights.clear()
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

        return step

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

    return step


def authors_step(args, weights, image, au_loc, label, device):
    """The step function of the authors' released code in args.authors (see the module doc)."""
    import torch

    # float64 only for stage 1: their EM path creates no tensor of its own, the AU and Fuse paths
    # make float32 ones (crops, masks, targets) that would silently round.
    f64_ok = args.mode == "stage1"
    if args.preset != "resnet101" or (args.dtype == "f64" and not f64_ok) or args.no_dropout \
            or args.nudge:
        sys.exit("--authors runs their ResNet-101 as released: use --preset resnet101, --dtype f32 "
                 "(f64: stage 1 only), no --no-dropout or --nudge")
    import warnings

    warnings.filterwarnings("ignore")  # as their main.py does (torchvision's `pretrained` notices)
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self  # their code moves what it creates to the GPU
    sys.path.insert(0, os.path.abspath(args.authors))
    import loss as authors_loss  # noqa: E402 (their loss.py)
    import model as authors_model  # noqa: E402 (their model.py)
    import utils as authors_utils  # noqa: E402 (their utils.py)

    # Their local_response_norm calls `pad` and `avg_pool3d` without importing them (docs/METHOD.md,
    # EM branch): the module gets torch's functions under those names, its text stays as released.
    authors_model.pad = torch.nn.functional.pad
    authors_model.avg_pool3d = torch.nn.functional.avg_pool3d

    dim = weights["fc_em_fuse_3.1.weight"].shape[0]
    model = authors_model.ResNet101(dim)
    model.load_state_dict(weights, strict=True)
    weights.clear()
    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    model.to(device=device, dtype=dtype)
    image = image.to(dtype)
    experiment = {"eval": "Fuse", "stage1": "EM", "stage2": "AU", "stage3": "Fuse"}[args.mode]
    ns = argparse.Namespace(Experiment=experiment, LearnRate=args.lr)

    if args.mode == "eval":
        model.eval()

        def step():
            with torch.no_grad():
                _, pred2, _ = model((image, au_loc), ns)
            return pred2

        return step

    optimizer = authors_utils.Set_Criterion_Optimizer(ns, authors_utils.Set_Param_Optim(ns, model))
    criterion = authors_loss.MSELoss() if experiment == "AU" else torch.nn.CrossEntropyLoss()
    eiau = authors_loss.Expression_Independent_AU_Loss()

    def step():
        # One iteration of main.py's Train() loop, its bookkeeping aside.
        model.train()
        if experiment == "Fuse":
            model.backbone.eval()
        if experiment == "EM":
            pred = model(image, ns)
            loss_ = criterion(pred, label)
        else:
            au_target = model.get_au_target(label.cpu())
            if experiment == "AU":
                pred = model((image, au_loc), ns)
                loss_ = criterion(pred, au_target) + 0.5 * eiau(pred, au_target) \
                    + authors_loss.Generate_AU_Loss()(model.PriorKnowledgeTable)
            else:
                pred1, pred2, au_prob = model((image, au_loc), ns)
                loss_ = criterion(pred1, label) + criterion(pred2, label) + 0.05 * eiau(au_prob, au_target)
        optimizer.zero_grad()
        loss_.backward()
        optimizer.step()
        return loss_

    return step


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
    ap.add_argument("--authors", metavar="DIR",
                    help="time the authors' released code in DIR (model.py, loss.py, utils.py)")
    ap.add_argument("--nudge", action="store_true",
                    help="multiply the images by (1 + one unit in the last place of the dtype): the "
                         "control run of tools/trainer_parity_resnet101.py")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    baseline = rss_bytes()

    device = torch.device(args.device)
    inputs = {k: v.to(device) for k, v in load_file(args.inputs).items()}
    image, au_loc, label = inputs["image"], inputs["au_loc"], inputs["label"]
    weights = load_file(args.weights)
    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    if args.authors:
        step = authors_step(args, weights, image, au_loc, label, device)
    else:
        step = reference_step(args, weights, image, au_loc, label, device, dtype)

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
