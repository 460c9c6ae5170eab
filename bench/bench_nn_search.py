"""How fast is the pixel search of `dtools nn`? Random images, the chunked search, wall time.

    python bench/bench_nn_search.py                      # 10,000 samples, 50,000 training images, 32x32
    python bench/bench_nn_search.py --samples 1000 --train 4009 --size 32 --no-mirror

Random uint8 images stand in for real ones (the search does the same work whatever the pixels):
it times `nearest_two` (float32 blocks of matrix products, exact float64 re-ranking of the
candidates), with the mirror images too unless --no-mirror, and prints the time and the rate in
sample-training pairs per second. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dtools.fid.neighbours import mirror, nearest_two, pixel_vectors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--no-mirror", dest="mirror", action="store_false")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (args.train, args.size, args.size, 3), dtype=np.uint8)
    samples = rng.integers(0, 256, (args.samples, args.size, args.size, 3), dtype=np.uint8)
    keys, queries = pixel_vectors(train), pixel_vectors(samples)
    flipped = pixel_vectors(mirror(train)) if args.mirror else None
    start = time.perf_counter()
    found = nearest_two(queries, keys, flipped, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    pairs = args.samples * args.train * (2 if args.mirror else 1)
    print(f"{args.samples} samples x {args.train} training images of {args.size}x{args.size}x3"
          f"{' (and their mirror images)' if args.mirror else ''}: {seconds:.1f} s, "
          f"{pairs / seconds / 1e6:.1f} million pairs/s on {torch.get_num_threads()} threads; "
          f"median ratio {np.median(found.ratio):.3f}")


if __name__ == "__main__":
    main()
