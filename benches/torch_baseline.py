#!/usr/bin/env python3
"""PyTorch baseline for `trainer bench`: the same Momentum² Teacher step, timed.

Written from docs/m2t-method.md §1–§4, independently of the engine. Run with
a Python that has torch and torchvision (on the dev machine /opt/torchenv):

    /opt/torchenv/bin/python benches/torch_baseline.py --arch resnet18 --bs 32 --res 32 --threads 2 --json
    python benches/torch_baseline.py --arch resnet50 --bs 128 --res 224 \\
        --device cuda --precision bf16 --channels-last --json

With --json it prints one line in the schema of `trainer bench --json`, plus
"framework", "mode" and "channels_last".
"""

import argparse
import copy
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
EMA_BASE = 0.99  # m0 of §2
BN_EPS = 1e-5
LR = 0.01  # constant, as in `trainer bench`; the value does not change the cost


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, choices=ARCHS)
    p.add_argument("--bs", type=int, required=True, help="pairs of views per step")
    p.add_argument("--res", type=int, required=True, help="image size")
    p.add_argument("--stem", choices=("small", "imagenet"), help="default: small below 128 px, else imagenet")
    p.add_argument("--width", type=int, default=64, help="torchvision ResNets are width 64 only")
    p.add_argument("--proj-hidden", type=int, default=4096)
    p.add_argument("--proj-out", type=int, default=256)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="timed steps, after one warm-up step")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the student forward and loss (the teacher stays eager)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args()
    if args.width != 64:
        p.error(f"--width {args.width}: torchvision's ResNets have width 64 only")
    if args.bs < 2 or args.res < 8 or args.steps < 1:
        p.error("--bs ≥ 2, --res ≥ 8 and --steps ≥ 1")
    if args.stem is None:
        args.stem = "small" if args.res < 128 else "imagenet"
    return args


def backbone(arch, stem, channels):
    """torchvision ResNet without its classifier; returns (net, feature count)."""
    net = getattr(torchvision.models, arch)(weights=None)
    features = net.fc.in_features
    net.fc = nn.Identity()
    if stem == "small" or channels != 3:
        kernel, stride, pad = (3, 1, 1) if stem == "small" else (7, 2, 3)
        net.conv1 = nn.Conv2d(channels, 64, kernel, stride, pad, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
    if stem == "small":
        net.maxpool = nn.Identity()
    return net, features


def mlp(fin, hidden, fout):
    """Projector / predictor of §1."""
    return nn.Sequential(nn.Linear(fin, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, fout))


class MomentumBN(nn.Module):
    """Momentum BN of §3, replacing one teacher BatchNorm layer.

    Normalises with β·(batch statistics) + (1−β)·history. The history moves
    only in `lazy_update`, after both views, so the second view never sees
    the first view's statistics.
    """

    def __init__(self, bn):
        super().__init__()
        self.weight, self.bias = bn.weight, bn.bias
        self.register_buffer("hist_mean", torch.zeros_like(bn.running_mean))
        self.register_buffer("hist_var", torch.ones_like(bn.running_var))
        self.beta = 1.0
        self.views = []  # (mean, unbiased var, n) of each view since the last update

    def forward(self, x):
        dims = [0] if x.dim() == 2 else [0, 2, 3]
        n = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x, dims, correction=1)
        # Under autocast the activations are 16-bit; the statistics and the
        # history stay in the parameters' precision.
        mean, var = mean.to(self.hist_mean.dtype), var.to(self.hist_mean.dtype)
        self.views.append((mean, var, n))
        b = self.beta
        # The release's double Bessel correction: n/(n−1) on the unbiased variance.
        mean_hat = b * mean + (1 - b) * self.hist_mean
        var_hat = b * var * (n / (n - 1)) + (1 - b) * self.hist_var
        # Eval-mode batch_norm: one fused normalise-and-affine with our statistics.
        return F.batch_norm(x, mean_hat, var_hat, self.weight, self.bias, False, 0.0, BN_EPS)

    @torch.no_grad()
    def lazy_update(self):
        (m1, v1, n), (m2, v2, _) = self.views
        self.views = []
        b = self.beta
        self.hist_mean.mul_(1 - b).add_((m1 + m2) / 2, alpha=b)
        self.hist_var.mul_(1 - b).add_((v1 + v2) / 2 * (n / (n - 1)), alpha=b)


class Student(nn.Module):
    """Backbone → projector → predictor → L2-normalise (§1)."""

    def __init__(self, args):
        super().__init__()
        self.backbone, features = backbone(args.arch, args.stem, args.channels)
        self.projector = mlp(features, args.proj_hidden, args.proj_out)
        self.predictor = mlp(args.proj_out, args.proj_hidden, args.proj_out)

    def forward(self, x):
        return F.normalize(self.predictor(self.projector(self.backbone(x))), dim=1)


class Teacher(nn.Module):
    """Copy of the student's backbone and projector, Momentum BN everywhere, no gradients."""

    def __init__(self, student):
        super().__init__()
        self.backbone = copy.deepcopy(student.backbone)
        self.projector = copy.deepcopy(student.projector)
        self._to_momentum_bn(self)
        self.requires_grad_(False)
        self.mbn = [m for m in self.modules() if isinstance(m, MomentumBN)]

    @classmethod
    def _to_momentum_bn(cls, module):
        for name, child in module.named_children():
            if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
                setattr(module, name, MomentumBN(child))
            else:
                cls._to_momentum_bn(child)

    def forward(self, x):
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def set_beta(self, beta):
        for m in self.mbn:
            m.beta = beta

    def lazy_update(self):
        for m in self.mbn:
            m.lazy_update()


def symmetric_loss(student, x1, x2, k1, k2):
    """§2: mean of (2 − 2⟨q1,k1⟩) + mean of (2 − 2⟨q2,k2⟩); one student forward per view."""
    q1, q2 = student(x1), student(x2)
    return (2 - 2 * (q1 * k1).sum(1)).mean() + (2 - 2 * (q2 * k2).sum(1)).mean()


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        if not torch.cuda.is_available():
            raise SystemExit(f"torch_baseline: --device {args.device}: CUDA is not available")
        # Fixed shapes: let cuDNN pick each convolution's fastest algorithm once.
        torch.backends.cudnn.benchmark = True
    amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    student = Student(args).to(device, memory_format=fmt).train()
    teacher = Teacher(student)  # the exact copy of §1 (EMA with m = 0)
    student_params = dict(student.named_parameters())
    # Pair by name: the predictor has no teacher twin.
    t_params, s_params = zip(*((p, student_params[n]) for n, p in teacher.named_parameters()))
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16")
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    # Only the student (6 of the 8 forward-equivalents of a pair) is compiled:
    # Momentum BN's per-step Python state (β, per-view statistics) would
    # make the teacher recompile or break its graph.
    loss_fn = torch.compile(symmetric_loss) if args.compile else symmetric_loss

    shape = (args.bs, args.channels, args.res, args.res)
    x1 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    x2 = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    total = args.steps + 1  # the warm-up step is iteration 0, as in `trainer bench`

    def step(k):
        cos = (math.cos(math.pi * k / total) + 1) / 2
        with torch.no_grad():
            # EMA before any forward; m = 1 − (1 − m0)·cos. _foreach_lerp_ is
            # what torch.optim uses: one fused pass over all parameters.
            torch._foreach_lerp_(t_params, s_params, 1 - (1 - EMA_BASE) * cos)
            teacher.set_beta(cos)
            with autocast:
                k1, k2 = teacher(x2), teacher(x1)
            teacher.lazy_update()
        with autocast:
            loss = loss_fn(student, x1, x2, k1, k2)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync():
        if on_gpu:
            torch.cuda.synchronize(device)

    times = []
    for k in range(total):
        sync()
        t0 = time.perf_counter()
        step(k)
        sync()
        if k > 0:
            times.append((time.perf_counter() - t0) * 1000)

    median = statistics.median(times)
    if on_gpu:
        device_name = torch.cuda.get_device_name(device)
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        device_name = f"cpu ({torch.get_num_threads()} threads)"
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {
        "arch": args.arch,
        "bs": args.bs,
        "res": args.res,
        "stem": args.stem,
        "precision": args.precision,
        "device": device_name,
        "steps": args.steps,
        "step_ms_median": median,
        "pairs_per_s": args.bs / (median / 1000),
        "peak_mem_mb": peak_mb,
        "framework": f"pytorch {torch.__version__}",
        "mode": "compile" if args.compile else "eager",
        "channels_last": args.channels_last,
    }
    if args.json:
        print(json.dumps(result))
    else:
        layout = ", channels_last" if args.channels_last else ""
        print(
            f"{args.arch} {args.stem} stem, bs {args.bs}, {args.res} px, {args.precision} on {device_name} "
            f"({result['framework']}, {result['mode']}{layout}): {median:.1f} ms/step (median of {args.steps}), "
            f"{result['pairs_per_s']:.1f} pairs/s, peak memory {peak_mb:.0f} MiB"
        )


if __name__ == "__main__":
    main()
