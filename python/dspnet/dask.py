"""Run a manifest of studies on a Dask cluster (``distributed``; on Slurm/PBS/SGE through dask-jobqueue).

    from distributed import Client, LocalCluster
    from dspnet.dask import segment_many
    with Client(LocalCluster(n_workers=2, threads_per_worker=1)) as client:
        rows = segment_many("studies.csv", client, report="report.csv")

One task per study; each worker process loads the model once and keeps it for every study it runs; a
task lost with its worker is run again elsewhere (``retries``). The journal and report are those of
``dspnet batch`` (:mod:`dspnet.manifest`), written by the calling process as results arrive, so a rerun
(here or with ``dspnet batch``) skips what is done. Each study runs exactly the code of ``dspnet batch``
(``dspnet_segment_files``): the same labels, written atomically, so a killed worker leaves no partial
output. Images, supports and outputs must be on a file system the workers share.
"""

import os
import threading
import time

from . import manifest as _manifest

# Per worker process: models by (weights, device), loaded on first use.
_models = {}
_models_lock = threading.Lock()
#: How many models this process has loaded (a test checks it is one per worker, not one per task).
model_loads = 0


def _model(weights, device):
    global model_loads
    from .binding import Model

    key = (weights, device)
    with _models_lock:
        if key not in _models:
            _models[key] = Model(weights, device=device)
            model_loads += 1
        return _models[key]


def run_study(image, support, output, options, weights=None, device="cpu"):
    """One study on this process (a Dask task): an outcome dict; study errors are outcomes, not raised
    (they are the study's, and running it again would not change them)."""
    from .binding import DspnetError

    t0 = time.perf_counter()
    try:
        summary = _model(weights, device).segment_files(image, support, output, **options)
        return {
            "status": "done",
            "error": None,
            "seconds": time.perf_counter() - t0,
            "labelled_voxels": summary.labelled_voxels,
            "pid": os.getpid(),
        }
    except (DspnetError, OSError, ValueError, TypeError) as e:
        return {
            "status": "failed",
            "error": str(e),
            "seconds": time.perf_counter() - t0,
            "labelled_voxels": None,
            "pid": os.getpid(),
        }


def segment_many(
    manifest,
    client,
    weights=None,
    *,
    device="cpu",
    journal=None,
    report=None,
    shard=None,
    force=False,
    retries=3,
    **options,
):
    """Segment every study of ``manifest`` (the CSV path, as for ``dspnet batch``) on ``client``.

    ``weights``: a .safetensors path the workers can read (None: the default model); ``options``:
    options of :meth:`dspnet.Model.segment` for every study, overridden by the manifest's columns.
    ``journal``: default MANIFEST.journal.jsonl; ``report``: a .csv or .json path; ``shard``: (i, n) to
    run studies i, i+n, ...; ``force``: ignore the journal; ``retries``: times a task lost with its
    worker is run again. Returns one dict per study (the report's rows: status "done", "skipped" or
    "failed", with the error); never raises for a failed study."""
    from distributed import as_completed

    studies = _manifest.read_manifest(manifest, **options)
    journal = os.fspath(journal) if journal else _manifest.default_journal(manifest)
    if weights is not None:
        weights = os.path.abspath(os.fspath(weights))
    if shard is not None:
        i, n = shard
        if not (0 <= i < n):
            raise ValueError(f"shard {shard}: need 0 <= i < n")
        studies = [s for s in studies if s.index % n == i]
    done = {} if force else _manifest.read_journal(journal)
    outcomes = {}
    futures = {}
    for s in studies:
        if done.get(s.key) and os.path.exists(s.output):
            outcomes[s.index] = {"status": "skipped", "error": None, "seconds": 0.0, "labelled_voxels": None}
        elif s.error is not None:
            outcomes[s.index] = {"status": "failed", "error": s.error, "seconds": 0.0, "labelled_voxels": None}
            _manifest.append_journal(journal, s, outcomes[s.index])
        else:
            f = client.submit(
                run_study,
                s.image,
                s.support,
                s.output,
                s.options,
                weights,
                device,
                key=f"dspnet-study-{s.index}-{os.urandom(4).hex()}",
                pure=False,
                retries=retries,
            )
            futures[f] = s
    for f in as_completed(list(futures)):
        s = futures[f]
        try:
            outcome = f.result()
        except Exception as e:  # the task itself was lost more often than `retries` (KilledWorker), ...
            outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}", "seconds": 0.0, "labelled_voxels": None}
        outcome.pop("pid", None)
        outcomes[s.index] = outcome
        _manifest.append_journal(journal, s, outcome)
    rows = _manifest.report_rows(studies, [outcomes[s.index] for s in studies])
    if report is not None:
        _manifest.write_report(report, rows)
    return rows
