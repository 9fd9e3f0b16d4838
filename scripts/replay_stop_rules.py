#!/usr/bin/env python3
"""Replay stop rules on chain traces (`cargo run --release --example calibrate -- ... trace:SETTING`).

A trace holds, for every slice of every chain run to the end of its territory with every slice accepted,
the presence score, the areas and the counts against the truth. With patience 1 a chain under a rule is
the traced chain up to the first slice where the rule rejects, so the rule's result is exact (before the
3D component filter). Prints, per setting and rule: mean/median whole-volume Dice, in-extent Dice, ends
within 3 slices, slices scored, and the copy-through-the-true-extent baseline is left to `dspnet eval`.

usage: replay_stop_rules.py TRACE.jsonl [LABEL-FILTER: all|crop|liver|aal]
"""

import json
import statistics
import sys
from collections import defaultdict


def load(path):
    chains = defaultdict(list)  # (image, setting, label, dir) -> steps in order
    meta = {}
    for line in open(path):
        r = json.loads(line)
        key = (str(r.get("image", "")), r["setting"], r["label"])
        d = -1 if r["z"] < r["painted"] else 1
        chains[key + (d,)].append(r)
        meta[key] = r
    return chains, meta


def rule_accepts(rule, step, history, painted_area):
    thr, min_area, min_overlap, rel = rule
    if step["area"] < max(1, min_area * painted_area):
        return False
    if step["presence"] < thr:
        return False
    if min_overlap > 0 and step["overlap"] < min_overlap * step["area"]:
        return False
    if rel > 0 and history:
        recent = [h["presence"] for h in history[-3:]]
        if step["presence"] < rel * (sum(recent) / len(recent)):
            return False
    return True


def replay(chains, meta, rule):
    per_class = {}
    for key, m in meta.items():
        lo, hi = m["extent"]
        painted_area = m["painted_area"]
        tp, fp, fn = painted_area, 0, 0  # the painted slice is exact
        zs = [m["painted"]]
        scored = 0
        untouched_truth = 0
        for d in (-1, 1):
            steps = chains.get(key + (d,), [])
            history = []
            stopped = False
            for s in steps:
                if stopped:
                    untouched_truth += s["truth"]
                    continue
                scored += 1
                if rule_accepts(rule, s, history, painted_area):
                    tp += s["tp"]
                    fp += s["fp"]
                    fn += s["fn"]
                    history.append(s)
                    if s["area"]:
                        zs.append(s["z"])
                else:
                    untouched_truth += s["truth"]
                    stopped = True
        fn += untouched_truth
        dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        per_class[key] = dict(dice=dice, ends=(min(zs) - lo, max(zs) - hi), scored=scored)
    return per_class


def main():
    chains, meta = load(sys.argv[1])
    settings = sorted({k[1] for k in meta})
    rules = []
    for thr in (float("-inf"), 0.2, 0.3, 0.4, 0.5, 0.6):
        for min_area in (0.0, 0.05, 0.15):
            for ov in (0.0, 0.5, 0.7):
                for rel in (0.0, 0.6, 0.8):
                    rules.append((thr, min_area, ov, rel))
    images = sorted({k[0] for k in meta})
    for image in images:
        print(f"== {image}")
        for setting in settings:
            sub = {k: v for k, v in meta.items() if k[0] == image and k[1] == setting}
            if not sub:
                continue
            rows = []
            for rule in rules:
                pc = replay(chains, sub, rule)
                d = [v["dice"] for v in pc.values()]
                ends = sum((abs(v["ends"][0]) <= 3) + (abs(v["ends"][1]) <= 3) for v in pc.values()) / (2 * len(pc))
                rows.append(
                    (statistics.median(d), statistics.mean(d), ends, sum(v["scored"] for v in pc.values()), rule)
                )
            rows.sort(key=lambda r: -r[1])
            print(f"-- setting '{setting}' ({len(sub)} classes); best by mean Dice:")
            for med, mean, ends, scored, rule in rows[:8]:
                print(
                    f"   thr {rule[0]:>5} area {rule[1]:.2f} overlap {rule[2]:.1f} rel {rule[3]:.1f}: mean {mean:.4f} median {med:.4f} ends<=3 {100 * ends:5.1f}% scored {scored}"
                )
            base = [r for r in rows if r[4] == (float("-inf"), 0.0, 0.0, 0.0)][0]
            print(f"   no stop: mean {base[1]:.4f} median {base[0]:.4f} ends<=3 {100 * base[2]:.1f}%")


if __name__ == "__main__":
    main()
