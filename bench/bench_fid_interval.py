"""How well does an interval from one set of samples describe how FID varies between sets of samples?

    python bench/bench_fid_interval.py FEATURES.safetensors   # real Inception features (a stats file
                                                               # with features, e.g. a sweep's reference)
    python bench/bench_fid_interval.py                        # synthetic Gaussian features only

The truth is measured directly: a pool of images is split into a fixed reference half and a pool of
"samples"; many disjoint sets of n samples are drawn from the pool and each is scored, so the spread
of their FIDs (and their mean, the expected FID at this n) is known. For each set, three intervals are
computed from that set alone, each with 200 resamples:

- `bootstrap`: resample the n samples with replacement, percentile interval of the replicate FIDs;
- `bootstrap, shifted`: the same replicates, moved so that their mean is the set's own FID;
- `half-sampling`: FID of random halves (without replacement), their spread around their mean added
  to the set's FID (what `dtools fid --interval` and `dtools sweep` report).

It prints, per method, the mean offset of the resampled scores from the set's own FID, the width
ratio (mean resample spread / true spread of FID over sets) and the coverage (share of sets whose
95% interval holds the expected FID). A good method has a ratio near 1 and a coverage near 0.95.
A benchmark, not a test: nothing asserts on the numbers.
"""

from __future__ import annotations

import argparse

import numpy as np

from dtools.fid.interval import FixedReferenceFid, centred_percentiles, half_subsets


def bootstrap_weights(n: int, count: int, rng) -> np.ndarray:
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(count)]).astype(float)


def study(reference: np.ndarray, pool: np.ndarray, n: int, sets: int, count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    scorer = FixedReferenceFid(reference.mean(0), np.cov(reference, rowvar=False), reference)
    order = rng.permutation(len(pool))
    fids, out = [], {"bootstrap": [], "bootstrap, shifted": [], "half-sampling": []}
    for k in range(sets):
        prep = scorer.prepare(pool[order[k * n:(k + 1) * n]])
        fid = scorer.score(prep)
        fids.append(fid)
        boot = np.array([scorer.score(prep, w) for w in bootstrap_weights(n, count, rng)])
        half = np.array([scorer.score(prep, w) for w in half_subsets(n, count, seed + k)])
        lo, hi = np.percentile(boot, [2.5, 97.5])
        shift = boot.mean() - fid  # what the repeats alone add to FID
        out["bootstrap"].append((lo, hi, boot.std(), shift))
        out["bootstrap, shifted"].append((lo - shift, hi - shift, boot.std(), 0.0))
        h_lo, h_hi = centred_percentiles(half)
        out["half-sampling"].append((fid + h_lo, fid + h_hi, half.std(), half.mean() - fid))
    fids = np.array(fids)
    expected, spread = fids.mean(), fids.std(ddof=1)
    rows = {}
    for name, got in out.items():
        got = np.array(got)
        cover = np.mean((got[:, 0] <= expected) & (expected <= got[:, 1]))
        rows[name] = (got[:, 2].mean() / spread, cover, got[:, 3].mean())
    return {"n": n, "sets": sets, "expected": expected, "spread": spread, "rows": rows}


def report(label: str, r: dict) -> None:
    print(f"\n{label}: n = {r['n']} samples per set, {r['sets']} disjoint sets; expected FID "
          f"{r['expected']:.2f}, its spread over sets (sd) {r['spread']:.3f}")
    print("| method | resample mean − FID | spread from one set / true spread | coverage of the expected "
          "FID |")
    print("|---|---|---|---|")
    for name, (ratio, cover, shift) in r["rows"].items():
        print(f"| {name} | {shift:+.2f} | {ratio:.2f} | {cover:.2f} |")


def synthetic(d: int, n_ref: int, rng) -> tuple[np.ndarray, np.ndarray]:
    mix = rng.standard_normal((d, d)) * 0.3 / np.sqrt(d) * 8
    reference = rng.standard_normal((n_ref, d)) @ mix + 1.0
    pool = rng.standard_normal((40 * 200, d)) @ (1.1 * mix) + 1.1
    return reference, pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("features", nargs="?", help="a dtools.fid-stats file with features")
    ap.add_argument("-n", type=int, nargs="+", default=[100, 200], help="samples per set")
    ap.add_argument("--sets", type=int, default=40)
    ap.add_argument("--resamples", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    reference, pool = synthetic(64, 5000, rng)
    for n in args.n:
        report("synthetic Gaussians, d = 64", study(reference, pool, n, args.sets, args.resamples, 1))
    if args.features:
        from dtools.fid.stats import load_stats

        feats = load_stats(args.features).features
        if feats is None:
            raise SystemExit(f"{args.features} holds no features (save it with --kid)")
        x = feats.numpy().astype(np.float64)[rng.permutation(len(feats))]
        reference, pool = x[: len(x) // 2], x[len(x) // 2:]
        for n in args.n:
            sets = min(args.sets, len(pool) // n)
            label = f"Inception features of {args.features} ({len(reference)} reference, pool {len(pool)})"
            report(label, study(reference, pool, n, sets, args.resamples, 2))


if __name__ == "__main__":
    main()
