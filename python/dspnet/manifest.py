"""The manifest, journal and report of ``dspnet batch``, in Python (for :mod:`dspnet.dask`).

Same formats as the command line's (src/cli/batch.rs), so that a run started with ``dspnet batch`` can
be finished on a Dask cluster and the other way round:

- manifest: CSV with a header row; columns ``image,support,output`` (paths relative to the manifest's
  folder unless absolute) and optional per-study ``classes`` ("1;3"), ``axis``, ``extent``, ``modality``,
  ``fov``, ``components``, ``propagation``;
- journal: JSON lines ``{"key", "study", "output", "status", "error", "seconds", "labelled_voxels"}``,
  each appended in one write and synced; a study is done when its last line says "done" and its output
  exists; the key is the study's three resolved paths joined by U+001F;
- report: ``.csv`` or ``.json`` (``{"studies": [...]}``) with study, image, support, output, status,
  error, seconds, labelled_voxels.
"""

import csv
import json
import os
from dataclasses import dataclass, field

from .binding import InvalidArgumentError, DSPNET_ERROR_INVALID_ARGUMENT

REQUIRED_COLUMNS = ("image", "support", "output")
OPTION_COLUMNS = ("classes", "axis", "extent", "modality", "fov", "components", "propagation")
_CHOICES = {
    "axis": ("auto", "i", "j", "k", "0", "1", "2"),
    "modality": ("auto", "ct", "mri"),
    "fov": ("slice", "auto"),
    "components": ("support", "all"),
    "propagation": ("memory", "independent"),
}


@dataclass
class Study:
    index: int  # 0-based row (the header not counted)
    image: str
    support: str
    output: str
    options: dict = field(default_factory=dict)  # keyword options of Model.segment_files
    error: str = None  # why the row cannot run (a bad option value), or None

    @property
    def key(self):
        return "\x1f".join((self.image, self.support, self.output))


def _bad(path, message):
    return InvalidArgumentError(f"manifest {path}: {message}", status=DSPNET_ERROR_INVALID_ARGUMENT)


def _row_options(row, base):
    opts = dict(base)
    for name in OPTION_COLUMNS:
        v = (row.get(name) or "").strip()
        if not v:
            continue
        if name == "classes":
            try:
                opts["classes"] = [int(c) for c in v.replace(",", ";").replace(" ", ";").split(";") if c]
            except ValueError:
                raise ValueError(f"classes '{v}': expected label values separated by ';'") from None
        elif name == "extent":
            if v not in ("auto", "all"):
                a, sep, b = v.partition(":")
                if not sep or not a.strip().isdigit() or not b.strip().isdigit():
                    raise ValueError(f"extent: '{v}': expected auto, all or A:B")
            opts["extent"] = v
        else:
            if v.lower() not in _CHOICES[name]:
                raise ValueError(f"{name}: invalid value '{v}' (possible values: {', '.join(_CHOICES[name])})")
            v = v.lower()
            opts[name] = None if (name == "axis" and v == "auto") else (int(v) if v.isdigit() else v)
    return opts


def read_manifest(path, **base_options):
    """The manifest's studies, with ``base_options`` overridden by each row's option columns."""
    path = os.fspath(path)
    base = os.path.dirname(path) or "."
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise OSError(f"manifest {path}: {e.strerror}") from e
    with f:
        rows = list(csv.reader(f))
    if not rows:
        raise _bad(path, "empty (a header row is needed)")
    header = [h.strip().lower() for h in rows[0]]
    for required in REQUIRED_COLUMNS:
        if required not in header:
            raise _bad(path, f"the header row has no '{required}' column (columns: {', '.join(header)})")
    for h in header:
        if h not in REQUIRED_COLUMNS + OPTION_COLUMNS:
            raise _bad(path, f"unknown column '{h}' (known: {', '.join(REQUIRED_COLUMNS + OPTION_COLUMNS)})")
    studies, outputs = [], {}
    for index, record in enumerate(r for r in rows[1:] if r):
        if len(record) != len(header):
            raise _bad(path, f"row {index + 2}: {len(record)} fields, the header has {len(header)}")
        row = {h: v.strip() for h, v in zip(header, record)}

        def resolve(p):
            return p if os.path.isabs(p) else os.path.join(base, p)

        s = Study(index, resolve(row["image"]), resolve(row["support"]), resolve(row["output"]))
        try:
            s.options = _row_options(row, base_options)
        except ValueError as e:
            s.error = str(e)
        if s.output in outputs:
            raise _bad(path, f"rows {outputs[s.output] + 2} and {index + 2} write the same output {s.output}")
        outputs[s.output] = index
        studies.append(s)
    return studies


def default_journal(manifest):
    return os.fspath(manifest) + ".journal.jsonl"


def read_journal(path):
    """{key: done?} from the journal's last line per study; unreadable lines (one cut by a kill) are skipped."""
    done = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    v = json.loads(line)
                    done[v["key"]] = v["status"] == "done"
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return done


def append_journal(path, study, outcome):
    """Append one study's line in a single write and sync it: once this returns it survives a kill."""
    record = {
        "key": study.key,
        "study": study.index,
        "output": study.output,
        "status": outcome["status"],
        "error": outcome.get("error"),
        "seconds": outcome.get("seconds", 0.0),
        "labelled_voxels": outcome.get("labelled_voxels"),
    }
    data = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def report_rows(studies, outcomes):
    return [
        {
            "study": s.index,
            "image": s.image,
            "support": s.support,
            "output": s.output,
            "status": o["status"],
            "error": o.get("error"),
            "seconds": o.get("seconds", 0.0),
            "labelled_voxels": o.get("labelled_voxels"),
        }
        for s, o in zip(studies, outcomes)
    ]


def write_report(path, rows):
    """Write the report (.json or .csv by extension) through a temporary file renamed into place."""
    path = os.fspath(path)
    tmp = os.path.join(
        os.path.dirname(path) or ".", f".{os.path.basename(path)}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    )
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            if path.lower().endswith(".json"):
                json.dump({"studies": rows}, f, indent=2)
            else:
                w = csv.writer(f)
                cols = ["study", "image", "support", "output", "status", "error", "seconds", "labelled_voxels"]
                w.writerow(cols)
                for r in rows:
                    w.writerow(
                        [
                            r["study"],
                            r["image"],
                            r["support"],
                            r["output"],
                            r["status"],
                            r["error"] or "",
                            f"{r['seconds']:.3f}",
                            "" if r["labelled_voxels"] is None else r["labelled_voxels"],
                        ]
                    )
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
