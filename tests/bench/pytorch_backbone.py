#!/usr/bin/env python3
"""PyTorch reference timing of the DSPNet backbone (dilated ResNet, output stride 8, + 1x1 projection).

Not part of CI; PyTorch is an optional, local-only dependency. Run, e.g.:

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch torchvision
    /tmp/torchvenv/bin/python tests/bench/pytorch_backbone.py --depth 101 --size 256 --threads 2 --reps 7

or side by side with ours: tests/bench/compare.sh (prints the ratio).

The network matches src/model/backbone.rs: torchvision resnet{50,101,152} with
replace_stride_with_dilation=[False, True, True], layers 1-4, then a 1x1 conv 2048->256. BatchNorm stays
in the graph, as in the official code in eval mode (oneDNN folds or fuses it itself). The input is a
1-channel slice replicated to 3 channels (as DSPNet feeds it). Weights are random: speed does not depend on
the values. Prints one line of JSON with the median ms per slice (and min, all reps).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torchvision


def build(depth: int) -> nn.Module:
    ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101, 152: torchvision.models.resnet152}[
        depth
    ]
    r = ctor(weights=None, replace_stride_with_dilation=[False, True, True])
    body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)
    return nn.Sequential(body, nn.Conv2d(2048, 256, kernel_size=1, bias=False)).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=101, choices=[50, 101, 152])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1, help="slices per forward pass; ms are reported per slice")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: PyTorch's default)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="also try torch.channels_last memory format")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    model = build(a.depth)
    x = torch.randn(a.batch, 1, a.size, a.size).expand(a.batch, 3, a.size, a.size).contiguous()
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    times, cpu = [], []
    with torch.inference_mode():
        for _ in range(a.warmup):
            model(x)
        for _ in range(a.reps):
            t, c = time.perf_counter(), time.process_time()
            y = model(x)
            times.append((time.perf_counter() - t) * 1e3 / a.batch)
            cpu.append((time.process_time() - c) * 1e3 / a.batch)
    print(
        json.dumps(
            {
                "impl": "pytorch",
                "torch": torch.__version__,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "mkldnn": torch.backends.mkldnn.is_available(),
                "threads": torch.get_num_threads(),
                "depth": a.depth,
                "size": a.size,
                "batch": a.batch,
                "channels_last": a.channels_last,
                "out_shape": list(y.shape),
                "backbone_ms_per_slice": statistics.median(times),
                "min_ms_per_slice": min(times),
                "all_ms": [round(t, 1) for t in times],
                # CPU time of all threads (OpenMP threads spin while waiting, so with several threads this
                # overstates the work; with one thread it is the work, whatever else loads the machine).
                "backbone_cpu_ms_per_slice": statistics.median(cpu),
            }
        )
    )


if __name__ == "__main__":
    main()
