"""Studies per hour with dspnet.dask.segment_many on a LocalCluster of 2 workers against 1, in one script.

    python scripts/bench_dask.py [--studies N] [--weights W] [--threads-per-worker-lib T]

Each study is the demo CT (tests/data/ct-liver) painted on its middle liver slice, default options; the
outputs of both runs are compared label for label. Needs the dspnet package with [dask,nibabel]."""

import argparse
import os
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=4)
    ap.add_argument("--weights", default=None)
    a = ap.parse_args()
    import nibabel as nib
    from distributed import Client, LocalCluster
    from dspnet.dask import segment_many

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
    image = os.path.join(root, "tests", "data", "ct-liver", "image.nii.gz")
    lab = nib.load(os.path.join(root, "tests", "data", "ct-liver", "labels.nii.gz"))
    truth = np.asarray(lab.dataobj).astype(np.uint16)
    ks = np.nonzero(truth.any(axis=(0, 1)))[0]
    mid = int(ks[len(ks) // 2])
    support = np.zeros_like(truth)
    support[:, :, mid] = truth[:, :, mid]
    work = tempfile.mkdtemp(prefix="dspnet-bench-dask-")
    nib.save(nib.Nifti1Image(support, lab.affine), os.path.join(work, "support.nii.gz"))
    results = {}
    for workers in (1, 2):
        m = os.path.join(work, f"w{workers}.csv")
        with open(m, "w") as f:
            f.write("image,support,output\n")
            for s in range(a.studies):
                f.write(f"{image},support.nii.gz,w{workers}/study-{s}.nii.gz\n")
        with (
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c,
            Client(c) as client,
        ):
            t0 = time.perf_counter()
            rows = segment_many(m, client, a.weights)
            dt = time.perf_counter() - t0
        assert all(r["status"] == "done" for r in rows), rows
        results[workers] = dt
        print(
            f"{workers} worker(s): {a.studies} studies in {dt:.1f} s = {a.studies * 3600 / dt:.1f} studies/h",
            flush=True,
        )
    for s in range(a.studies):
        x = np.asarray(nib.load(os.path.join(work, f"w1/study-{s}.nii.gz")).dataobj)
        y = np.asarray(nib.load(os.path.join(work, f"w2/study-{s}.nii.gz")).dataobj)
        assert np.array_equal(x, y), f"study {s} differs between the runs"
    print(
        f"2 workers / 1 worker throughput: {results[1] / results[2]:.2f}x on {os.cpu_count()} cores; outputs identical"
    )


if __name__ == "__main__":
    main()
