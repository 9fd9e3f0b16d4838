#!/usr/bin/env python3
"""Fit and replay a learned stop rule on chain traces (examples/calibrate.rs `trace:` settings).

Each scored slice of a chain gets features the chain knows when it scores the slice (presence, area, overlap
with the previous and the painted mask, in-plane drift, distance from the painted slice; sizes relative to
the painted mask). A logistic model of "still inside the structure" is fitted on the tuning traces, and a
chain stops at the first slice whose probability falls below tau (patience 1: exact to replay, since every
slice before the stop was accepted in the trace too). Near the painted slice the painted mask may be copied
instead of the model's prediction (`--copy` sizes under the `--zone` forms of `copy_zone`).

usage: stop_model.py --tune A.jsonl[:labels] ... --report B.jsonl[:labels] ... [--features f1,f2,...]
  labels: `even` / `odd` (AAL pair halves, pair index (label+1)/2) or omitted (all)
"""

import argparse
import json
import math
import statistics
from collections import defaultdict

FEATURES = ["presence", "log_area", "overlap_prev", "overlap_painted", "distance", "drift", "drop"]


def load(spec):
    path, _, half = spec.partition(":")
    chains = defaultdict(list)
    for line in open(path):
        r = json.loads(line)
        pair = (r["label"] + 1) // 2
        if half == "even" and pair % 2 != 0 or half == "odd" and pair % 2 != 1:
            continue
        d = 1 if r["z"] > r["painted"] else -1
        chains[(path, r["label"], d)].append(r)
    for rs in chains.values():
        rs.sort(key=lambda r: abs(r["z"] - r["painted"]))
    return chains


def chain_features(rs):
    """Features of each slice of one chain, computed as the chain would (from the slices before it)."""
    out, recent = [], []
    for r in rs:
        pa = r["painted_area"]
        radius = math.sqrt(pa / math.pi) * r["spacing"][0]
        pres = r["presence"] if r["presence"] is not None and r["presence"] > -1e30 else -2.0
        pres = max(-2.0, min(3.0, pres))
        s, ps = r["stats"], r["painted_stats"]
        drift = math.hypot(s[0] - ps[0], s[1] - ps[1]) / radius if s and ps else 3.0
        drop = pres / (sum(recent) / len(recent)) if recent and sum(recent) > 0 else 1.0
        f = {
            "presence": pres,
            "log_area": math.log((r["area"] + 1) / pa),
            "overlap_prev": r["overlap"] / max(1, r["area"]),
            "overlap_painted": r["painted_overlap"] / max(1, r["area"]),
            "distance": abs(r["z"] - r["painted"]) * r["spacing"][2] / radius,
            "drift": min(drift, 3.0),
            "drop": max(-2.0, min(2.0, drop)),
        }
        out.append(f)
        recent = (recent + [pres])[-3:]
    return out


def fit(rows, labels, l2=1e-3, iters=3000, lr=0.5):
    n, k = len(rows), len(rows[0])
    mean = [statistics.fmean(r[j] for r in rows) for j in range(k)]
    sd = [statistics.pstdev([r[j] for r in rows]) or 1.0 for j in range(k)]
    x = [[(r[j] - mean[j]) / sd[j] for j in range(k)] for r in rows]
    w, b = [0.0] * k, 0.0
    for _ in range(iters):
        gw, gb = [0.0] * k, 0.0
        for xi, yi in zip(x, labels):
            z = b + sum(wj * xj for wj, xj in zip(w, xi))
            p = 1 / (1 + math.exp(-max(-30, min(30, z))))
            e = p - yi
            gb += e
            for j in range(k):
                gw[j] += e * xi[j]
        b -= lr * gb / n
        w = [wj - lr * (g / n + l2 * wj) for wj, g in zip(w, gw)]
    # Back to raw feature units: z = b' + sum w'_j f_j.
    wr = [w[j] / sd[j] for j in range(k)]
    br = b - sum(w[j] * mean[j] / sd[j] for j in range(k))
    return wr, br


def default_rule(f, r):
    """The shipped rule: presence >= 0.4, >= 0.6 x the last three accepted, area >= 15 % of the painted."""
    return f["presence"] >= 0.4 and f["drop"] >= 0.6 and r["area"] >= 0.15 * r["painted_area"]


def logistic_rule(names, w, b, tau):
    cut = math.log(tau / (1 - tau))
    return lambda f, r: b + sum(wj * f[n] for wj, n in zip(w, names)) >= cut


def copy_zone(rs, c, form):
    """How far (mm) from the painted slice the painted mask is copied, under one of the zone forms:
    `radius`: c x the painted mask's equivalent radius R; `sphere`: the height at which a sphere of radius R
    has moved its boundary by c feature cells, sqrt(2 R c cell); `self`: c R sqrt(1 - a), a the agreement
    (Dice) of the model's mask with the painted one on the first slice of the chain."""
    r0 = rs[0]
    pa = r0["painted_area"]
    radius = math.sqrt(pa / math.pi) * r0["spacing"][0]
    if form == "radius":
        return c * radius
    if form == "sphere":
        cell = 8 * max(r0["image"][0] * r0["spacing"][0], r0["image"][1] * r0["spacing"][1]) / 256
        return math.sqrt(2 * radius * c * cell)
    agree = 2 * r0["painted_overlap"] / (r0["area"] + pa)
    return c * radius * math.sqrt(max(0.0, 1 - agree))


def replay(chains, accept, copy_k, form="radius"):
    """Per structure: whole-volume Dice (no component filter), in-extent Dice, end errors, slices scored."""
    per = defaultdict(lambda: {"tp": 0, "area": 0, "truth": 0, "tp_in": 0, "area_in": 0, "ends": [], "slices": 0})
    for (path, label, d), rs in chains.items():
        s = per[(path, label)]
        pa = rs[0]["painted_area"]
        lo, hi = rs[0]["extent"]
        if not s["ends"] and s["truth"] == 0:
            s["tp"] += pa
            s["area"] += pa
            s["truth"] += pa
            s["tp_in"] += pa
            s["area_in"] += pa
        last = rs[0]["painted"]
        stopped = False
        zone = copy_zone(rs, copy_k, form)
        for r, f in zip(rs, chain_features(rs)):
            s["truth"] += r["truth"]
            if stopped:
                continue
            s["slices"] += 1
            if not accept(f, r):
                stopped = True
                continue
            last = r["z"]
            copy = abs(r["z"] - r["painted"]) * r["spacing"][2] <= zone
            tp, area = (r["painted_tp"], pa) if copy else (r["tp"], r["area"])
            s["tp"] += tp
            s["area"] += area
            if lo <= r["z"] <= hi:
                s["tp_in"] += tp
                s["area_in"] += area
        true_end = lo if d < 0 else hi
        s["ends"].append(abs(last - true_end))
    res = []
    for key, s in per.items():
        rs = [r for (p, l, _), c in chains.items() if (p, l) == key for r in c]
        truth_in = s["truth"]  # truth lies inside the extent by definition
        res.append(
            {
                "key": key,
                "dice": 2 * s["tp"] / (s["area"] + s["truth"]),
                "in": 2 * s["tp_in"] / (s["area_in"] + truth_in),
                "ends": s["ends"],
                "slices": s["slices"],
                "copy_ext": copy_through_extent(rs),
            }
        )
    return res


def copy_through_extent(rs):
    pa = rs[0]["painted_area"]
    tp, area, truth = pa, pa, pa
    lo, hi = rs[0]["extent"]
    for r in rs:
        truth += r["truth"]
        if lo <= r["z"] <= hi:
            tp += r["painted_tp"]
            area += pa
    return 2 * tp / (area + truth)


def summary(res):
    dice = [r["dice"] for r in res]
    ins = [r["in"] for r in res]
    ends = [e for r in res for e in r["ends"]]
    ce = [r["copy_ext"] for r in res]
    beats = sum(r["dice"] > r["copy_ext"] for r in res)
    return (
        f"n {len(res):3d} whole mean {statistics.fmean(dice):.3f} med {statistics.median(dice):.3f} | in mean {statistics.fmean(ins):.3f} "
        f"med {statistics.median(ins):.3f} | ends<=3 {100 * sum(e <= 3 for e in ends) / len(ends):4.0f}% | copy(ext) med {statistics.median(ce):.3f} "
        f"beats {beats} | slices {sum(r['slices'] for r in res)}"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tune", nargs="+", required=True)
    ap.add_argument("--report", nargs="*", default=[])
    ap.add_argument("--features", default=",".join(FEATURES))
    ap.add_argument("--window", type=int, default=15, help="train on slices at most this many past the true end")
    ap.add_argument("--copy", default="0,0.5,1,1.5")
    ap.add_argument("--zone", default="radius", help="copy-zone forms to try (radius, sphere, self; see copy_zone)")
    ap.add_argument("--no-logistic", action="store_true", help="replay the shipped rule only")
    args = ap.parse_args()
    names = args.features.split(",")
    tune = {}
    for s in args.tune:
        tune.update(load(s))
    rows, labels = [], []
    for rs in tune.values():
        lo, hi = rs[0]["extent"]
        for r, f in zip(rs, chain_features(rs)):
            past = max(lo - r["z"], r["z"] - hi, 0)
            if past > args.window:
                continue
            rows.append([f[n] for n in names])
            labels.append(1 if past == 0 else 0)
    w, b = fit(rows, labels)
    print(f"fitted on {len(rows)} slices ({sum(labels)} inside) of {len(tune)} chains")
    print("  z = %.4f " % b + " ".join(f"{wj:+.4f}*{n}" for wj, n in zip(w, names)))
    reports = [(s, load(s)) for s in args.report]
    for k, g in [(float(v), a) for a in args.zone.split(",") for v in args.copy.split(",")]:
        print(f"copy<={k:<4} {g:<6} default:  tune  " + summary(replay(tune, default_rule, k, g)))
        for s, ch in reports:
            print(f"{'':32s}{s[-30:]:>30s} " + summary(replay(ch, default_rule, k, g)))
        if args.no_logistic:
            continue
        for tau in (0.3, 0.4, 0.5, 0.6, 0.7):
            print(
                f"copy<={k:<4} {g:<6} tau {tau}: tune  " + summary(replay(tune, logistic_rule(names, w, b, tau), k, g))
            )
            for s, ch in reports:
                print(f"{'':32s}{s[-30:]:>30s} " + summary(replay(ch, logistic_rule(names, w, b, tau), k, g)))


if __name__ == "__main__":
    main()
