"""A third kind of images for the benchmarks: 32x32 patches of photographs, made offline.

    pip install scikit-image            # its package data holds 17 photographs; nothing is downloaded
    python bench/photos.py photos/      # 4,000 PNGs, then:
    python bench/quality.py --minutes 5 --source photos/ --out q-photos

Each photo is resized (Lanczos) to 160 pixels on its short side; patch i comes from photo i mod 17, a
square of a random side in [32, 96] at a random place, resized to 32x32 and mirrored half the time.
The seed fixes every patch. docs/quality.md ("Guidance on three kinds of images") used these.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "rocket.jpg",
          "motorcycle_left.png", "retina.jpg", "ihc.png", "color.png", "brick.png", "grass.png",
          "gravel.png", "coins.png", "camera.png", "page.png", "moon.png", "horse.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("-n", type=int, default=4000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        import skimage
    except ImportError:
        print("Error: needs scikit-image (pip install scikit-image): its package data holds the photos",
              file=sys.stderr)
        return 1
    folder = Path(os.path.dirname(skimage.__file__)) / "data"
    if args.out.exists() and any(args.out.iterdir()):
        print(f"Error: {args.out} is not empty", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    images = []
    for name in PHOTOS:
        im = Image.open(folder / name).convert("RGB")
        w, h = im.size
        s = 160 / min(w, h)
        im = im.resize((max(160, round(w * s)), max(160, round(h * s))), Image.LANCZOS)
        images.append(np.asarray(im))
    for i in range(args.n):
        a = images[i % len(images)]
        height, width, _ = a.shape
        c = int(rng.integers(args.size, 3 * args.size + 1))
        y, x = int(rng.integers(0, height - c + 1)), int(rng.integers(0, width - c + 1))
        patch = Image.fromarray(a[y:y + c, x:x + c]).resize((args.size, args.size), Image.LANCZOS)
        if rng.random() < 0.5:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
        patch.save(args.out / f"{i:06d}.png")
    print(f"wrote {args.n} patches of {len(PHOTOS)} photos to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
