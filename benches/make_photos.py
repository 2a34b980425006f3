#!/usr/bin/env python3
"""Builds an ImageNet-like ImageFolder of real photos for the loader benchmark.

The photos are the colour sample photos OpenCV ships in Debian's `opencv-doc`
package (examples/data: street scenes, fruit, animals, buildings, ...). Each
output image is a random crop (50-100% of the photo's area) of one of them,
resized to 500x375 (a quarter of them 375x500, portrait) and saved as a JPEG
at quality 90 (4:2:0 chroma), the typical size and encoding of an ImageNet
training image. The same photo appears in many crops: the set is for timing
the input pipeline, not for learning.

Usage: python3 benches/make_photos.py OUT_DIR [--classes 4] [--per-class 100]
          [--source DIR]
  --source  the photos' folder [default: download `opencv-doc` with
            `apt-get download` into a temporary folder and unpack it there]
Needs Pillow (the torchvision environment has it).
"""

import argparse
import glob
import os
import random
import subprocess
import sys
import tempfile

from PIL import Image

# Real colour photos in opencv-doc's examples/data (no drawings, charts or
# calibration patterns).
PHOTOS = [
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg",
    "board.jpg", "building.jpg", "butterfly.jpg", "ela_original.jpg", "fruits.jpg",
    "graf1.png", "home.jpg", "left.jpg", "leuvenA.jpg", "leuvenB.jpg",
    "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "pca_test1.jpg",
    "right.jpg", "rubberwhale1.png", "squirrel_cls.jpg", "stuff.jpg",
]
DATA = "usr/share/doc/opencv-doc/examples/data"


def fetch_source(tmp):
    """Downloads and unpacks opencv-doc into `tmp`; returns the photos' folder."""
    subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True)
    deb = glob.glob(os.path.join(tmp, "opencv-doc_*.deb"))[0]
    subprocess.run(["dpkg", "-x", deb, os.path.join(tmp, "x")], check=True)
    return os.path.join(tmp, "x", DATA)


def crop_to(photo, rng, out_w, out_h):
    """A random crop of 50-100% of `photo`'s area with the output's aspect."""
    w, h = photo.size
    aspect = out_w / out_h
    area = w * h * rng.uniform(0.5, 1.0)
    cw = min(w, round((area * aspect) ** 0.5))
    ch = min(h, round(cw / aspect))
    cw = min(cw, round(ch * aspect))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return photo.crop((left, top, left + cw, top + ch)).resize((out_w, out_h), Image.BICUBIC)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--source")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or fetch_source(tmp)
        photos = [Image.open(os.path.join(source, p)).convert("RGB") for p in PHOTOS]
        rng = random.Random(14)
        for c in range(args.classes):
            folder = os.path.join(args.out, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(args.per_class):
                photo = photos[(c * args.per_class + i) % len(photos)]
                size = (375, 500) if rng.random() < 0.25 else (500, 375)
                img = crop_to(photo, rng, *size)
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                img.save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
    n = args.classes * args.per_class
    print(f"make_photos: {n} JPEGs in {args.classes} classes under {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
