#!/usr/bin/env python3
"""What chain traces say about stopping and about copying (`cargo run --release --example calibrate --
IMAGE LABELS all trace:prop=memory` with CALIBRATE_OUT=TRACE.jsonl).

Prints (1) for each per-slice feature, the AUC of separating slices inside the true extent from slices past
its end (1 = perfect, 0.5 = none); (2) slice-pooled in-extent Dice of the model and of copying the painted
mask, by distance from the painted slice; (3) per-structure in-extent Dice under a perfect stop when the
painted mask is copied up to k slices away and the model is used beyond (the hybrid the traces suggest).

usage: trace_analysis.py TRACE.jsonl [...]
"""

import bisect
import json
import math
import statistics
import sys
from collections import defaultdict


def auc(pos, neg):
    """P(a random inside slice scores above a random past-the-end slice)."""
    if not pos or not neg:
        return float("nan")
    neg = sorted(neg)
    s = 0.0
    for p in pos:
        lo, hi = bisect.bisect_left(neg, p), bisect.bisect_right(neg, p)
        s += lo + 0.5 * (hi - lo)
    return s / len(pos) / len(neg)


def features(r):
    """Per-slice features, oriented so that higher means 'still inside the structure'."""
    pa, ps, s = r["painted_area"], r["painted_stats"], r["stats"]
    radius_mm = math.sqrt(pa / math.pi) * r["spacing"][0]  # equivalent radius of the painted mask
    f = {
        "presence": r["presence"] if r["presence"] is not None else -9.0,
        "area / painted area": r["area"] / pa,
        "overlap with previous": r["overlap"] / max(1, r["area"]),
        "overlap with painted": r["painted_overlap"] / max(1, r["area"]),
        "-distance / painted radius": -abs(r["z"] - r["painted"]) * r["spacing"][2] / radius_mm,
    }
    if s and ps:
        f["-centroid drift / radius"] = -math.hypot(s[0] - ps[0], s[1] - ps[1]) / radius_mm
        f["-|intensity z-score|"] = -abs(s[2] - ps[2]) / max(ps[3], 1e-6)
    return f


def report(path):
    rows = [json.loads(line) for line in open(path)]
    by_label = defaultdict(list)
    feats = defaultdict(lambda: ([], []))
    pooled = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for r in rows:
        by_label[r["label"]].append(r)
        lo, hi = r["extent"]
        inside = lo <= r["z"] <= hi
        for k, v in features(r).items():
            feats[k][0 if inside else 1].append(v)
        if inside:
            b = pooled[min(abs(r["z"] - r["painted"]), 40) // 5]
            for i, key in enumerate(("tp", "fp", "fn", "painted_tp", "painted_area", "truth")):
                b[i] += r[key]
    print(f"== {path}: {len(by_label)} structures")
    print("feature AUC, inside the extent against past its end:")
    for k, (p, n) in feats.items():
        print(f"  {k:28s} {auc(p, n):.3f}  (inside {len(p)}, past {len(n)})")
    print("in-extent Dice pooled over slices, by distance from the painted slice: model / copy")
    for d in sorted(pooled):
        tp, fp, fn, ctp, ca, tr = pooled[d]
        print(f"  {5 * d:3d}-{5 * d + 4:3d} slices: {2 * tp / (2 * tp + fp + fn):.3f} / {2 * ctp / (ca + tr):.3f}")
    print("in-extent Dice under a perfect stop, copy up to k slices then the model (k=0: model; inf: copy):")
    for k in (0, 3, 5, 8, 10, 12, 15, math.inf):
        dice = []
        for rs in by_label.values():
            lo, hi = rs[0]["extent"]
            pa = rs[0]["painted_area"]
            tp = area = truth = pa  # the painted slice is exact
            for r in rs:
                if not lo <= r["z"] <= hi:
                    continue
                if abs(r["z"] - r["painted"]) <= k:
                    tp, area = tp + r["painted_tp"], area + pa
                else:
                    tp, area = tp + r["tp"], area + r["area"]
                truth += r["truth"]
            dice.append(2 * tp / (area + truth))
        print(f"  k={k:>4}: mean {statistics.mean(dice):.3f} median {statistics.median(dice):.3f}")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        report(p)
