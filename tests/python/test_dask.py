"""dspnet.dask.segment_many on a real distributed.LocalCluster with 2 worker processes: the same labels,
journal and report as `dspnet batch`, one model load per worker, and a worker killed mid-run loses nothing."""

import csv
import json
import os
import signal
import threading
import time

import numpy as np
import pytest

import dspnet
from conftest import CT, run_cli, write_support

distributed = pytest.importorskip("distributed")
from dspnet.dask import segment_many  # noqa: E402


def make_manifest(d, ct, n, prefix):
    """n studies of the CT crop, painted on different slices, each over 8 slices."""
    img, support = ct
    rows = ["image,support,output,extent"]
    for s in range(n):
        k = 60 + s
        sup = np.zeros_like(support)
        sup[:, :, k] = support[:, :, 64]  # the painted liver, moved to slice k
        path = d / f"support-{s}.nii.gz"
        write_support(path, img, sup)
        rows.append(f"{os.path.join(CT, 'image.nii.gz')},{path.name},{prefix}/study-{s}.nii.gz,{k - 4}:{k + 4}")
    m = d / f"{prefix}.csv"
    m.write_text("\n".join(rows) + "\n")
    return m


def labels(path):
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def journal_lines(m):
    with open(str(m) + ".journal.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        with distributed.Client(c) as client:
            yield client


def test_same_results_journal_and_report_as_dspnet_batch(cluster, ct, weights, tmp_path):
    n = 4
    ref = make_manifest(tmp_path, ct, n, "batch")
    run_cli("batch", ref, "--weights", weights, "--device", "cpu", "--quiet")
    m = make_manifest(tmp_path, ct, n, "dask")
    report = tmp_path / "report.csv"
    rows = segment_many(m, cluster, weights, report=report)
    assert [r["status"] for r in rows] == ["done"] * n
    for s in range(n):
        assert np.array_equal(
            labels(tmp_path / f"dask/study-{s}.nii.gz"), labels(tmp_path / f"batch/study-{s}.nii.gz")
        ), s
    with open(report) as f:
        rep = list(csv.DictReader(f))
    assert [r["status"] for r in rep] == ["done"] * n and all(int(r["labelled_voxels"]) > 0 for r in rep)
    # The model is loaded once per worker process, not once per task.
    loads = cluster.run(lambda: __import__("dspnet.dask").dask.model_loads)
    assert len(loads) == 2 and all(v <= 1 for v in loads.values()) and sum(loads.values()) >= 1
    # dspnet batch reads the Dask run's journal (and the other way round): nothing is redone.
    out = run_cli("batch", m, "--weights", weights, "--device", "cpu")
    assert f"{n} studies: 0 done, {n} skipped" in out.stderr
    assert [r["status"] for r in segment_many(m, cluster, weights)] == ["skipped"] * n
    # A study that fails is recorded, the others go on.
    bad = tmp_path / "bad.csv"
    bad.write_text(m.read_text() + f"{tmp_path / 'nope.nii.gz'},support-0.nii.gz,dask/nope.nii.gz,1:3\n")
    rows = segment_many(bad, cluster, weights)
    assert [r["status"] for r in rows] == ["done"] * n + ["failed"] and "nope.nii.gz" in rows[-1]["error"]


def test_a_worker_killed_mid_run_loses_nothing(cluster, ct, weights, tmp_path):
    n = 6
    ref = make_manifest(tmp_path, ct, n, "batch")
    run_cli("batch", ref, "--weights", weights, "--device", "cpu", "--quiet")
    m = make_manifest(tmp_path, ct, n, "dask")
    result, errors = {}, []

    def run():
        try:
            result["rows"] = segment_many(m, cluster, weights, retries=3)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    # Kill (SIGKILL) a worker while it is running a study; its nanny starts a new one.
    pids = cluster.run(os.getpid)
    victim, deadline = None, time.time() + 300
    while victim is None and time.time() < deadline and t.is_alive():
        busy = [w for w, tasks in cluster.processing().items() if tasks]
        if busy and os.path.exists(str(m) + ".journal.jsonl"):
            victim = busy[0]
        time.sleep(0.2)
    assert victim is not None, "no worker was busy after the first study finished"
    time.sleep(1.0)  # inside the study's work
    os.kill(pids[victim], signal.SIGKILL)
    t.join(600)
    assert not errors, errors
    rows = result["rows"]
    assert [r["status"] for r in rows] == ["done"] * n, rows
    done = [line["key"] for line in journal_lines(m) if line["status"] == "done"]
    assert len(done) == n and len(set(done)) == n, "every study done exactly once"
    for s in range(n):
        assert np.array_equal(
            labels(tmp_path / f"dask/study-{s}.nii.gz"), labels(tmp_path / f"batch/study-{s}.nii.gz")
        ), s
    leftovers = [f for f in os.listdir(tmp_path / "dask") if ".tmp-" in f]
    assert not leftovers, leftovers
    assert os.getpid() not in cluster.run(os.getpid).values()
    assert pids[victim] not in cluster.run(os.getpid).values(), "the killed worker was replaced"
