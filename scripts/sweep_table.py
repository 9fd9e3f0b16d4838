#!/usr/bin/env python3
"""Markdown tables from `dspnet eval --sweep --json` files (the model card's head study).

Usage: scripts/sweep_table.py NAME=FILE.json [NAME=FILE.json ...] [--per-class]
One table: a row per (parameter, value), a column pair per file (mean Dice whole volume / inside the true
extent), the copy baseline last; with --per-class, also a table per file with each structure's Dice."""

import json
import sys


def load(arg):
    name, _, path = arg.partition("=")
    with open(path) as f:
        return name, json.load(f)


def main(argv):
    per_class = "--per-class" in argv
    runs = [load(a) for a in argv if a != "--per-class"]
    keys = [(r["key"], r["value"]) for r in runs[0][1]["sweep"]]
    head = "| parameter | value | " + " | ".join(f"{n} whole / in-extent" for n, _ in runs) + " |"
    print(head)
    print("|" + "---|" * (2 + len(runs)))
    for i, (k, v) in enumerate(keys):
        cells = []
        for _, j in runs:
            r = j["sweep"][i]
            assert (r["key"], r["value"]) == (k, v), "the files must sweep the same values"
            base = j["sweep"][0]["mean_dice"]
            delta = r["mean_dice"] - base
            mark = "" if i == 0 else f" ({delta:+.3f})"
            cells.append(f"{r['mean_dice']:.3f}{mark} / {r['mean_dice_in_extent']:.3f}")
        print(f"| {k} | {v} | " + " | ".join(cells) + " |")
    cells = [f"{j['copy']['mean_dice']:.3f} / {j['copy']['mean_dice_in_extent']:.3f}" for _, j in runs]
    print("| copy baseline | every slice / through the true extent | " + " | ".join(cells) + " |")
    if per_class:
        for name, j in runs:
            labels = [c["label"] for c in j["sweep"][0]["classes"]]
            print(f"\n{name}, Dice whole volume per structure\n")
            print("| parameter | value | " + " | ".join(str(l) for l in labels) + " |")
            print("|" + "---|" * (2 + len(labels)))
            for r in j["sweep"]:
                print(f"| {r['key']} | {r['value']} | " + " | ".join(f"{c['dice']:.2f}" for c in r["classes"]) + " |")
            print(
                "| copy | through the true extent | "
                + " | ".join(f"{c['dice_in_extent']:.2f}" for c in j["copy"]["classes"])
                + " |"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
