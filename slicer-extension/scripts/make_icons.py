#!/usr/bin/env python3
"""Regenerate the extension's icons (needs Pillow): a stack of three slices, the middle one painted,
the structure propagated to the others.

    python slicer-extension/scripts/make_icons.py
"""

import os

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = os.path.join(HERE, "..", "FewShotSegment")


def icon(size):
    s = size / 128.0
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)

    def P(x, y):
        return (x * s, y * s)

    for n, (dy, painted) in enumerate(((0, False), (34, True), (68, False))):
        top = 14 + dy
        slab = [P(34, top), P(122, top), P(94, top + 40), P(6, top + 40)]
        fill = (236, 240, 245, 255) if painted else (200, 208, 220, 235)
        d.polygon(slab, fill=fill, outline=(60, 70, 90, 255))
        blob = [P(42 + 4 * n, top + 8), P(82 - 2 * n, top + 8), P(72, top + 32), P(30 + 3 * n, top + 32)]
        if painted:
            d.polygon(blob, fill=(214, 96, 60, 255), outline=(140, 50, 30, 255))
        else:
            d.polygon(blob, fill=(214, 96, 60, 110), outline=(214, 96, 60, 255))
    return img


if __name__ == "__main__":
    icon(128).save(os.path.join(MODULE, "Resources", "Icons", "FewShotSegment.png"), optimize=True)
    icon(64).save(os.path.join(MODULE, "FewShotSegmentLib", "SegmentEditorEffect.png"), optimize=True)
    print("icons written")
