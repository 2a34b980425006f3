#!/usr/bin/env python3
"""The input pipeline alone in PyTorch: torchvision's ImageFolder and a
DataLoader with Momentum² Teacher's two view pipelines (BYOL's, as
m2t-method.md §5 lists them and trainer/src/augment.rs implements them), timed
like `trainer bench --loader --augment host`.

Usage: python benches/torch_loader.py --data FOLDER [--res 224] [--bs 64]
           [--workers 2] [--batches 20] [--blur pil|torchvision] [--json]
Prints pairs/s after one warm-up batch per worker.
"""

import argparse
import json
import time

import random

import torch
from PIL import ImageFilter
from torchvision import datasets, transforms as T


class PilBlur:
    """Gaussian blur with σ ~ U[0.1, 2.0] through PIL's ImageFilter, as the
    MoCo v2 and SimCLR code bases do it: separable and about 40 times faster
    than torchvision's GaussianBlur on a PIL image (a dense 23×23
    convolution of a tensor), so the stronger baseline."""

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def pipelines(res, blur):
    """View one and view two of the method, on PIL images; `blur` is pil or
    torchvision."""
    normalise = [T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    # BYOL's blur kernel for torchvision: 23 px at 224 (10% of the side), odd.
    kernel = max(3, int(res * 0.1) // 2 * 2 + 1)
    blurred = PilBlur() if blur == "pil" else T.GaussianBlur(kernel, sigma=(0.1, 2.0))

    def view(blur_p, solarize_p):
        return T.Compose([
            T.RandomResizedCrop(res, scale=(0.08, 1.0), antialias=True),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomApply([blurred], p=blur_p),
            T.RandomGrayscale(p=0.2),
            T.RandomHorizontalFlip(),
            T.RandomSolarize(128, p=solarize_p),
            *normalise,
        ])

    return view(1.0, 0.0), view(0.1, 0.2)


class TwoViews:
    """Both views of one decoded image."""

    def __init__(self, res, blur):
        self.one, self.two = pipelines(res, blur)

    def __call__(self, image):
        return self.one(image), self.two(image)


def single_thread(_worker):
    torch.set_num_threads(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--blur", choices=["pil", "torchvision"], default="pil",
                    help="the blur: PIL's ImageFilter (default, faster) or torchvision's GaussianBlur")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dataset = datasets.ImageFolder(args.data, transform=TwoViews(args.res, args.blur))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.bs, shuffle=True, drop_last=True,
        num_workers=args.workers, worker_init_fn=single_thread,
        persistent_workers=args.workers > 0, prefetch_factor=2 if args.workers > 0 else None)

    def batches():
        while True:
            yield from loader

    it = batches()
    for _ in range(max(1, args.workers)):
        next(it)
    start = time.perf_counter()
    for _ in range(args.batches):
        (view1, view2), _labels = next(it)
        assert view1.shape == (args.bs, 3, args.res, args.res)
    wall = time.perf_counter() - start
    pairs = args.bs * args.batches / wall
    result = {
        "torchvision": torch.__version__, "blur": args.blur, "res": args.res, "bs": args.bs,
        "workers": args.workers, "batches": args.batches, "wall_s": wall,
        "pairs_per_s": pairs, "pairs_per_s_per_worker": pairs / max(1, args.workers),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torchvision DataLoader: {pairs:.1f} pairs/s "
              f"({pairs / max(1, args.workers):.1f} per worker), {args.batches} batches in {wall:.2f} s")


if __name__ == "__main__":
    main()
