#!/usr/bin/env python3
"""Markdown tables from `dspnet eval --compare --json` output: a summary, then one row per class.

usage: compare_table.py COMPARE.json [LABELS.txt] [--exclude 71,72,...] [--only 71,72,...]
"""

import json
import statistics
import sys


def main():
    args = sys.argv[1:]
    data = json.load(open(args[0]))["compare"]
    names = {}
    if len(args) > 1 and not args[1].startswith("--"):
        for line in open(args[1]):
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
    pick = lambda label: True
    if "--exclude" in args:
        ex = {int(x) for x in args[args.index("--exclude") + 1].split(",")}
        pick = lambda label: label not in ex
    if "--only" in args:
        only = {int(x) for x in args[args.index("--only") + 1].split(",")}
        pick = lambda label: label in only
    rows = {m: [c for c in data[m]["classes"] if pick(c["label"])] for m in data}
    n = len(rows["memory"])
    copy_ext = [c["dice_in_extent"] for c in rows["copy"]]
    print(f"{n} structures\n")
    print("| method | whole mean | whole median | in-extent mean | in-extent median | ends within 3 | slices scored |")
    print("|---|---|---|---|---|---|---|")
    for m in ("memory", "independent", "copy"):
        w = [c["dice"] for c in rows[m]]
        e = [c["dice_in_extent"] for c in rows[m]]
        ends = sum(sum(int(x <= 3) for x in c["extent_error"]) for c in rows[m] if c["extent_error"]) / (2 * n)
        name = m if m != "copy" else "copy (every slice)"
        print(
            f"| {name} | {statistics.mean(w):.3f} | {statistics.median(w):.3f} | {statistics.mean(e):.3f} | "
            f"{statistics.median(e):.3f} | {100 * ends:.0f} % | {sum(c['slices_processed'] for c in rows[m])} |"
        )
    print(
        f"| copy through the true extent | {statistics.mean(copy_ext):.3f} | {statistics.median(copy_ext):.3f} | "
        f"{statistics.mean(copy_ext):.3f} | {statistics.median(copy_ext):.3f} | 100 % (knows the extent) | – |"
    )
    mem = rows["memory"]
    beats = sum(c["dice"] > x for c, x in zip(mem, copy_ext))
    beats_in = sum(c["dice_in_extent"] > x for c, x in zip(mem, copy_ext))
    beats_ind = sum(c["dice"] > d["dice"] for c, d in zip(mem, rows["independent"]))
    print(
        f"\nmemory beats copy-through-the-true-extent on {beats}/{n} (whole volume) and {beats_in}/{n} (inside the "
        f"extent); beats independent (whole volume) on {beats_ind}/{n}.\n"
    )
    if "--rows" in args:
        print(
            "| label | structure | extent | memory whole / in-ext | ends | slices | independent whole / in-ext | copy in-ext |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for c, d, k in zip(mem, rows["independent"], rows["copy"]):
            ends = (
                "–"
                if not c["predicted_extent"]
                else f"{c['predicted_extent'][0] - c['extent'][0]:+d}, {c['predicted_extent'][1] - c['extent'][1]:+d}"
            )
            print(
                f"| {c['label']} | {names.get(c['label'], '')} | {c['extent'][0]}–{c['extent'][1]} | "
                f"{c['dice']:.2f} / {c['dice_in_extent']:.2f} | {ends} | {c['slices_processed']} | "
                f"{d['dice']:.2f} / {d['dice_in_extent']:.2f} | {k['dice_in_extent']:.2f} |"
            )


if __name__ == "__main__":
    main()
