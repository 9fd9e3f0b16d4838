"""ctypes binding of libdspnet's C ABI (``include/dspnet.h``, ABI version 1; sessions need 0.2, files 0.3).

The one binding of the library for Python: the ``dspnet`` package (``pip install ./python``) and the 3D
Slicer extension (which bundles this package) both use it. Plain Python + numpy: no Slicer, no Qt.

The package API (``dspnet.Model``, ``dspnet.Session``) takes arrays indexed ``[i, j, k]``, as nibabel
returns them::

    import dspnet
    model = dspnet.Model()                      # the default model, on the CPU
    labels = model.segment(image, support, spacing=(0.8, 0.8, 2.5), extent="auto")

The module-level :func:`segment` and the ``index_order="kji"`` option take arrays indexed ``[k, j, i]``
(numpy's C order, i fastest): exactly the layout of the C API's ``dspnet_volume_t`` and of Slicer's
``slicer.util.arrayFromVolume``, so such arrays are passed to the library without a copy. Arrays
indexed ``[i, j, k]`` are transposed as views (no copy when Fortran-ordered) and results come back in
the caller's order. Spacing and the slice axis are always given in the i, j, k order
(``volumeNode.GetSpacing()``, nibabel's ``header.get_zooms()``; axis 0 = i, 1 = j, 2 = k).

Where the library is found (first hit wins): ``$DSPNET_LIBRARY`` (a file, or a folder holding
``libdspnet.so``); the package's own ``lib`` folder (where the wheel and the Slicer extension put it);
in a source checkout, the repository's ``target/release``; inside an installed Slicer extension, its
library folders; then the system's (``LD_LIBRARY_PATH``, the loader cache, ``ctypes.util.find_library``).

Every failing status becomes a :class:`DspnetError` subclass carrying the status code, its name and the
library's message. Segmentation runs with the GIL released (ctypes releases it for every call into a
``CDLL``), so other Python threads, Slicer's GUI among them, keep running; progress callbacks run on
the calling thread.
"""

import ctypes
import ctypes.util
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ABI_VERSION",
    "DspnetError",
    "NullArgumentError",
    "InvalidArgumentError",
    "ShapeError",
    "NonFiniteError",
    "NoSupportError",
    "DspnetIOError",
    "ModelFormatError",
    "VolumeFormatError",
    "BackendUnavailableError",
    "DspnetOutOfMemoryError",
    "CancelledError",
    "BackendError",
    "PanicError",
    "LibraryNotFoundError",
    "BusyError",
    "parse_slice_axis",
    "Library",
    "load_library",
    "library_candidates",
    "Model",
    "Session",
    "Summary",
    "segment",
    "segment_files",
]

#: The ABI major version this binding was written for (``DSPNET_ABI_VERSION`` of include/dspnet.h).
ABI_VERSION = 1

# Status codes (enum dspnet_status_t).
DSPNET_OK = 0
DSPNET_ERROR_NULL_ARGUMENT = 1
DSPNET_ERROR_INVALID_ARGUMENT = 2
DSPNET_ERROR_SHAPE = 3
DSPNET_ERROR_NON_FINITE = 4
DSPNET_ERROR_NO_SUPPORT = 5
DSPNET_ERROR_IO = 6
DSPNET_ERROR_MODEL_FORMAT = 7
DSPNET_ERROR_VOLUME_FORMAT = 8
DSPNET_ERROR_BACKEND_UNAVAILABLE = 9
DSPNET_ERROR_OUT_OF_MEMORY = 10
DSPNET_ERROR_CANCELLED = 11
DSPNET_ERROR_BACKEND = 12
DSPNET_ERROR_PANIC = 13
DSPNET_ERROR_BUSY = 14
#: At most this many slices are suggested (``DSPNET_MAX_SUGGESTIONS``).
MAX_SUGGESTIONS = 3

# DSPNET_DTYPE_*
_DTYPES = {
    np.dtype(np.uint8): 1,
    np.dtype(np.int8): 2,
    np.dtype(np.uint16): 3,
    np.dtype(np.int16): 4,
    np.dtype(np.uint32): 5,
    np.dtype(np.int32): 6,
    np.dtype(np.float32): 7,
    np.dtype(np.float64): 8,
}
MODALITY = {"auto": 0, "ct": 1, "mri": 2}
EXTENT_AUTO, EXTENT_ALL, EXTENT_RANGE = 0, 1, 2
FOV = {"slice": 0, "auto": 1}
COMPONENTS = {"support": 0, "all": 1}
PROPAGATION = {"memory": 0, "independent": 1}
_AXES = {"i": 0, "j": 1, "k": 2}


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class DspnetError(RuntimeError):
    """A libdspnet call failed. ``status`` is the dspnet_status_t value, ``status_name`` its name
    ("DSPNET_ERROR_IO", ...), ``message`` the library's own description (dspnet_last_error_message)."""

    status = None

    def __init__(self, message, status=None, status_name=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.status_name = status_name or _STATUS_NAMES.get(self.status, "DSPNET_ERROR_UNKNOWN")

    def __str__(self):
        return self.message


class NullArgumentError(DspnetError):
    status = DSPNET_ERROR_NULL_ARGUMENT


class InvalidArgumentError(DspnetError, ValueError):
    status = DSPNET_ERROR_INVALID_ARGUMENT


class ShapeError(DspnetError, ValueError):
    status = DSPNET_ERROR_SHAPE


class NonFiniteError(DspnetError, ValueError):
    status = DSPNET_ERROR_NON_FINITE


class NoSupportError(DspnetError, ValueError):
    status = DSPNET_ERROR_NO_SUPPORT


class DspnetIOError(DspnetError, OSError):
    status = DSPNET_ERROR_IO


class ModelFormatError(DspnetError):
    status = DSPNET_ERROR_MODEL_FORMAT


class VolumeFormatError(DspnetError):
    status = DSPNET_ERROR_VOLUME_FORMAT


class BackendUnavailableError(DspnetError):
    status = DSPNET_ERROR_BACKEND_UNAVAILABLE


class DspnetOutOfMemoryError(DspnetError, MemoryError):
    status = DSPNET_ERROR_OUT_OF_MEMORY


class CancelledError(DspnetError):
    """The run was cancelled through the progress callback; the output was not touched."""

    status = DSPNET_ERROR_CANCELLED


class BackendError(DspnetError):
    status = DSPNET_ERROR_BACKEND


class PanicError(DspnetError):
    """A bug inside libdspnet (a caught Rust panic). The process is unaffected."""

    status = DSPNET_ERROR_PANIC


class BusyError(DspnetError):
    """The session is already segmenting (another thread, or its own progress callback)."""

    status = DSPNET_ERROR_BUSY


class LibraryNotFoundError(ImportError):
    """libdspnet could not be loaded, or its ABI does not match this binding."""


_ERROR_CLASSES = {
    cls.status: cls
    for cls in (
        NullArgumentError,
        InvalidArgumentError,
        ShapeError,
        NonFiniteError,
        NoSupportError,
        DspnetIOError,
        ModelFormatError,
        VolumeFormatError,
        BackendUnavailableError,
        DspnetOutOfMemoryError,
        CancelledError,
        BackendError,
        PanicError,
        BusyError,
    )
}
_STATUS_NAMES = {
    0: "DSPNET_OK",
    1: "DSPNET_ERROR_NULL_ARGUMENT",
    2: "DSPNET_ERROR_INVALID_ARGUMENT",
    3: "DSPNET_ERROR_SHAPE",
    4: "DSPNET_ERROR_NON_FINITE",
    5: "DSPNET_ERROR_NO_SUPPORT",
    6: "DSPNET_ERROR_IO",
    7: "DSPNET_ERROR_MODEL_FORMAT",
    8: "DSPNET_ERROR_VOLUME_FORMAT",
    9: "DSPNET_ERROR_BACKEND_UNAVAILABLE",
    10: "DSPNET_ERROR_OUT_OF_MEMORY",
    11: "DSPNET_ERROR_CANCELLED",
    12: "DSPNET_ERROR_BACKEND",
    13: "DSPNET_ERROR_PANIC",
    14: "DSPNET_ERROR_BUSY",
}


# --------------------------------------------------------------------------------------------------
# C structs (field order and types exactly as in include/dspnet.h)
# --------------------------------------------------------------------------------------------------

PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)


class dspnet_volume_t(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_uint32),
        ("dims", ctypes.c_size_t * 3),
        ("spacing", ctypes.c_double * 3),
    ]


class dspnet_head_options_t(ctypes.Structure):
    _fields_ = [
        ("max_num_sp", ctypes.c_uint32),
        ("avg_sp_area", ctypes.c_uint32),
        ("fg_thresh", ctypes.c_float),
        ("bg_thresh", ctypes.c_float),
        ("val_wsize", ctypes.c_uint32),
        ("alpha", ctypes.c_float),
        ("alpha_bg", ctypes.c_float),
        ("w1_w2_w3", ctypes.c_float * 3),
        ("n_iter", ctypes.c_uint32),
    ]


#: The prototype head's parameters, under the official DSPNet code's names (``head={...}`` of the segment calls).
HEAD_KEYS = tuple(name for name, _ in dspnet_head_options_t._fields_)


class dspnet_segment_options_t(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("slice_axis", ctypes.c_int),
        ("modality", ctypes.c_uint32),
        ("extent", ctypes.c_uint32),
        ("extent_first", ctypes.c_size_t),
        ("extent_last", ctypes.c_size_t),
        ("fov", ctypes.c_uint32),
        ("components", ctypes.c_uint32),
        ("classes", ctypes.POINTER(ctypes.c_uint16)),
        ("num_classes", ctypes.c_size_t),
        ("progress", PROGRESS_FN),
        ("user_data", ctypes.c_void_p),
        # Appended in 0.2; an older library reads only the fields its own struct_size covers.
        ("propagation", ctypes.c_uint32),
        # Appended in 0.4.
        ("head", dspnet_head_options_t),
    ]


class dspnet_segment_summary_t(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("slice_axis", ctypes.c_int),
        ("modality", ctypes.c_uint32),
        ("num_classes", ctypes.c_size_t),
        ("slices_processed", ctypes.c_size_t),
        ("labelled_voxels", ctypes.c_size_t),
        ("seconds", ctypes.c_double),
        # Appended in 0.2: an older library fills only up to seconds (and says so in struct_size).
        ("num_slices", ctypes.c_size_t),
        ("slice_confidence", ctypes.POINTER(ctypes.c_float)),
        ("slice_confidence_capacity", ctypes.c_size_t),
        ("num_suggested", ctypes.c_size_t),
        ("suggested_slices", ctypes.c_size_t * MAX_SUGGESTIONS),
    ]


#: Bytes of the summary's first version (up to and including ``seconds``).
_SUMMARY_V1_SIZE = dspnet_segment_summary_t.num_slices.offset


class dspnet_session_options_t(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("feature_budget_bytes", ctypes.c_size_t),
    ]


class dspnet_session_info_t(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("dims", ctypes.c_size_t * 3),
        ("feature_budget_bytes", ctypes.c_size_t),
        ("cached_slices", ctypes.c_size_t),
        ("cached_bytes", ctypes.c_size_t),
        ("image_bytes", ctypes.c_size_t),
        ("slices_encoded", ctypes.c_size_t),
        ("slices_reused", ctypes.c_size_t),
        ("chain_bytes", ctypes.c_size_t),
        ("chains_replayed", ctypes.c_size_t),
    ]


# --------------------------------------------------------------------------------------------------
# Finding and loading the library
# --------------------------------------------------------------------------------------------------

_LIB_NAMES = {
    "linux": ["libdspnet.so", "libdspnet.so.%d" % ABI_VERSION],
    "darwin": ["libdspnet.dylib", "libdspnet.%d.dylib" % ABI_VERSION],
    "win32": ["dspnet.dll"],
}.get(sys.platform if sys.platform in ("darwin", "win32") else "linux")


def _package_library_dirs():
    """Folders next to this package that may hold libdspnet, most specific first."""
    here = os.path.dirname(os.path.abspath(__file__))  # .../dspnet
    parent = os.path.dirname(here)
    dirs = [os.path.join(here, "lib")]  # the wheel; the Slicer extension
    # A source checkout (<repo>/python/dspnet): the library `cargo build --release` made.
    repo = os.path.dirname(parent)
    if os.path.isfile(os.path.join(repo, "Cargo.toml")) and os.path.isfile(os.path.join(repo, "include", "dspnet.h")):
        target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target")
        dirs.append(os.path.join(os.path.abspath(target), "release"))
    # Installed Slicer extension: <ext>/lib/Slicer-X.Y/qt-scripted-modules/dspnet; prebuilt third-party
    # libraries go to <ext>/lib/Slicer-X.Y (Slicer_INSTALL_THIRDPARTY_LIB_DIR).
    if os.path.basename(parent) == "qt-scripted-modules":
        slicer_lib = os.path.dirname(parent)
        dirs += [
            os.path.join(parent, "FewShotSegmentLib", "lib"),
            slicer_lib,
            os.path.join(slicer_lib, "qt-loadable-modules"),
        ]
    return dirs


def library_candidates():
    """Paths tried, in order, when no explicit path is given (for error messages and diagnostics)."""
    cands = []
    env = os.environ.get("DSPNET_LIBRARY")
    if env:
        if os.path.isdir(env):
            cands += [os.path.join(env, n) for n in _LIB_NAMES]
        else:
            cands.append(env)
    for d in _package_library_dirs():
        cands += [os.path.join(d, n) for n in _LIB_NAMES]
    return cands


class Library:
    """A loaded libdspnet with its function prototypes declared. Use :func:`load_library`."""

    def __init__(self, path):
        try:
            cdll = ctypes.CDLL(path)
        except OSError as e:
            raise LibraryNotFoundError(f"cannot load libdspnet from {path}: {e}") from e
        self.path = getattr(cdll, "_name", path)
        self._cdll = cdll
        try:
            self._declare(cdll)
        except AttributeError as e:
            raise LibraryNotFoundError(f"{path} is not libdspnet (or a too old one): {e}") from e
        abi = cdll.dspnet_abi_version()
        if abi != ABI_VERSION:
            raise LibraryNotFoundError(
                f"{path} has C ABI version {abi}, this binding needs version {ABI_VERSION}; "
                "install a matching libdspnet or a matching extension"
            )
        self.abi_version = abi
        self.version = cdll.dspnet_version().decode("utf-8", "replace")

    @staticmethod
    def _declare(lib):
        lib.dspnet_abi_version.restype = ctypes.c_uint32
        lib.dspnet_abi_version.argtypes = []
        lib.dspnet_version.restype = ctypes.c_char_p
        lib.dspnet_version.argtypes = []
        lib.dspnet_last_error_message.restype = ctypes.c_char_p
        lib.dspnet_last_error_message.argtypes = []
        lib.dspnet_model_load.restype = ctypes.c_int
        lib.dspnet_model_load.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.dspnet_model_free.restype = None
        lib.dspnet_model_free.argtypes = [ctypes.c_void_p]
        lib.dspnet_segment_options_init.restype = None
        lib.dspnet_segment_options_init.argtypes = [ctypes.POINTER(dspnet_segment_options_t)]
        seg_args = [
            ctypes.c_void_p,
            ctypes.POINTER(dspnet_volume_t),
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(dspnet_segment_options_t),
        ]
        lib.dspnet_segment.restype = ctypes.c_int
        lib.dspnet_segment.argtypes = seg_args
        # Optional functions (present in the header, not in the minimal contract).
        if hasattr(lib, "dspnet_segment_with_summary"):
            lib.dspnet_segment_with_summary.restype = ctypes.c_int
            lib.dspnet_segment_with_summary.argtypes = seg_args + [ctypes.POINTER(dspnet_segment_summary_t)]
        if hasattr(lib, "dspnet_status_name"):
            lib.dspnet_status_name.restype = ctypes.c_char_p
            lib.dspnet_status_name.argtypes = [ctypes.c_int]
        if hasattr(lib, "dspnet_model_device"):
            lib.dspnet_model_device.restype = ctypes.c_char_p
            lib.dspnet_model_device.argtypes = [ctypes.c_void_p]
        if hasattr(lib, "dspnet_segment_files"):  # 0.3
            lib.dspnet_segment_files.restype = ctypes.c_int
            lib.dspnet_segment_files.argtypes = [
                ctypes.c_void_p,
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.c_char_p,
                ctypes.POINTER(dspnet_segment_options_t),
                ctypes.POINTER(dspnet_segment_summary_t),
            ]
        if hasattr(lib, "dspnet_session_create"):  # 0.2
            lib.dspnet_session_options_init.restype = None
            lib.dspnet_session_options_init.argtypes = [ctypes.POINTER(dspnet_session_options_t)]
            lib.dspnet_session_create.restype = ctypes.c_int
            lib.dspnet_session_create.argtypes = [
                ctypes.c_void_p,
                ctypes.POINTER(dspnet_volume_t),
                ctypes.POINTER(dspnet_session_options_t),
                ctypes.POINTER(ctypes.c_void_p),
            ]
            lib.dspnet_session_segment_with_summary.restype = ctypes.c_int
            lib.dspnet_session_segment_with_summary.argtypes = [
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.POINTER(dspnet_segment_options_t),
                ctypes.POINTER(dspnet_segment_summary_t),
            ]
            lib.dspnet_session_info.restype = ctypes.c_int
            lib.dspnet_session_info.argtypes = [ctypes.c_void_p, ctypes.POINTER(dspnet_session_info_t)]
            lib.dspnet_session_free.restype = None
            lib.dspnet_session_free.argtypes = [ctypes.c_void_p]

    @property
    def has_summary(self):
        return hasattr(self._cdll, "dspnet_segment_with_summary")

    @property
    def has_sessions(self):
        return hasattr(self._cdll, "dspnet_session_create")

    def check(self, status, what):
        """Raise the exception for a non-zero status. Must run on the thread that made the call,
        right after it: the message is thread-local and valid until the next libdspnet call."""
        if status == DSPNET_OK:
            return
        raw = self._cdll.dspnet_last_error_message() or b""
        message = raw.decode("utf-8", "replace") or f"{what} failed"
        name = None
        if hasattr(self._cdll, "dspnet_status_name"):
            name = self._cdll.dspnet_status_name(int(status)).decode("ascii", "replace")
        cls = _ERROR_CLASSES.get(int(status), DspnetError)
        raise cls(message, status=int(status), status_name=name)

    def __repr__(self):
        return f"<libdspnet {self.version} (ABI {self.abi_version}) at {self.path}>"


_library = None
_library_lock = threading.Lock()


def load_library(path=None):
    """Load libdspnet (once per process unless ``path`` is given) and check its ABI version.

    Raises :class:`LibraryNotFoundError` listing the places searched."""
    global _library
    if path is not None:
        return Library(path)
    with _library_lock:
        if _library is not None:
            return _library
        env = os.environ.get("DSPNET_LIBRARY")
        if env:  # an explicit choice that is wrong is an error, not a reason to pick another library
            wanted = [os.path.join(env, n) for n in _LIB_NAMES] if os.path.isdir(env) else [env]
            if not any(os.path.isfile(c) for c in wanted):
                raise LibraryNotFoundError(f"DSPNET_LIBRARY={env}: no libdspnet there (looked for {', '.join(wanted)})")
        tried = []
        for cand in library_candidates():
            if os.path.isfile(cand):
                _library = Library(cand)  # a file that is there but does not load is an error, not a miss
                return _library
            tried.append(cand)
        # The system: dlopen's own search (LD_LIBRARY_PATH, rpath, loader cache), then find_library.
        system = list(_LIB_NAMES)
        found = ctypes.util.find_library("dspnet")
        if found:
            system.append(found)
        for name in system:
            try:
                _library = Library(name)
                return _library
            except LibraryNotFoundError as e:
                tried.append(f"{name} ({e})" if "ABI" in str(e) else name)
        raise LibraryNotFoundError(
            "libdspnet was not found. Set DSPNET_LIBRARY to the library file (e.g. target/release/libdspnet.so), "
            "or install the dspnet package (pip install ./python). Tried: " + ", ".join(tried)
        )


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class _Owned:
    """A library object owned by Python: freed by :meth:`close`, on ``with`` exit or when collected."""

    _free = None  # name of the C function that frees the handle

    def close(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle is not None and handle.value:
            getattr(self.library._cdll, self._free)(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class Model(_Owned):
    """A loaded DSPNet model (``dspnet_model_t``). Immutable and shareable between threads.

    ``weights``: a .safetensors file, or None for the default model (``$DSPNET_WEIGHTS``, the one the
    package carries, ...; see ``dspnet_model_load``). ``device``: "cpu", "cuda", "cuda:N" or "auto"
    (CUDA when the library was built with it and a GPU is there)."""

    _free = "dspnet_model_free"

    def __init__(self, weights=None, device="cpu", library=None):
        self.library = library if library is not None else load_library()
        self.weights = None if weights in (None, "") else os.fspath(weights)
        path = os.fsencode(self.weights) if self.weights is not None else None
        dev = None if device in (None, "", "auto") else str(device).encode("utf-8")
        handle = ctypes.c_void_p()
        status = self.library._cdll.dspnet_model_load(path, dev, ctypes.byref(handle))
        self.library.check(status, "dspnet_model_load")
        self._handle = handle

    @property
    def handle(self):
        if self._handle is None or not self._handle.value:
            raise ValueError("the model has been closed")
        return self._handle

    @property
    def device(self):
        """ "cpu" or "cuda:N" (the device actually used)."""
        if hasattr(self.library._cdll, "dspnet_model_device"):
            return self.library._cdll.dspnet_model_device(self.handle).decode("utf-8", "replace")
        return "unknown"

    def segment(self, image, support, spacing, *, index_order="ijk", return_summary=False, axis=None, **options):
        """Segment ``image`` from the slices painted in ``support``; returns the label array (uint16, shaped
        and ordered like ``image``), or ``(labels, summary)`` with ``return_summary=True``.

        Arrays are indexed ``[i, j, k]`` (nibabel's order; ``index_order="kji"`` for ``[k, j, i]``), in
        any memory order and any dtype the C API takes; ``spacing`` is the voxel size along i, j, k in mm.
        Options as the command line's: ``axis`` ("i", "j", "k" or None = auto), ``extent``, ``modality``,
        ``fov``, ``components``, ``classes``, ``propagation``, ``head``; and ``progress(done, total)``, ``cancel``
        (an Event or a callable), ``out``. See :func:`segment`."""
        if axis is not None:
            options["slice_axis"] = axis
        labels, summary = segment(self, image, support, spacing, index_order=index_order, **options)
        return (labels, summary) if return_summary else labels

    def session(self, image, spacing, **kwargs):
        """A :class:`Session` on ``image`` with this model (for several runs with corrections)."""
        return Session(self, image, spacing, **kwargs)

    def segment_files(self, image_path, support_path, output_path, **options):
        """:func:`segment_files` with this model."""
        return segment_files(self, image_path, support_path, output_path, **options)


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run did (``dspnet_segment_summary_t``; fields the library did not report are None).

    ``slice_confidence``: float32 array with one entry per slice along the slice axis, the model's
    confidence in [0, 1] for the slices it scored and NaN for the others (painted, outside the extent).
    ``suggested_slices``: slices to check or paint next, least confident first."""

    slice_axis: int = None
    modality: str = None
    num_classes: int = None
    slices_processed: int = None
    labelled_voxels: int = None
    seconds: float = None
    slice_confidence: np.ndarray = None
    suggested_slices: list = None


def _as_image(array):
    """A C-contiguous, aligned, native-endian array of a dtype the C API takes (no copy when possible)."""
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    dt = a.dtype.newbyteorder("=") if a.dtype.byteorder not in ("=", "|") else a.dtype
    if dt not in _DTYPES:
        dt = np.dtype(np.float64) if dt.kind in "iu" else np.dtype(np.float32)
    if a.dtype != dt or not a.flags.c_contiguous or not a.flags.aligned:
        a = np.ascontiguousarray(a, dtype=dt)
    return a


def _as_u16(array, shape, what):
    a = np.asarray(array)
    if a.shape != shape:
        raise ShapeError(f"{what} has shape {a.shape}, the image {shape}", status=DSPNET_ERROR_SHAPE)
    if a.dtype.kind == "f" or (a.dtype.kind in "iu" and a.size and (a.min() < 0 or a.max() > 65535)):
        raise InvalidArgumentError(
            f"{what} must hold integer labels 0..65535 (got dtype {a.dtype})", status=DSPNET_ERROR_INVALID_ARGUMENT
        )
    if a.dtype != np.dtype(np.uint16) or not a.flags.c_contiguous or not a.flags.aligned:
        a = np.ascontiguousarray(a, dtype=np.uint16)
    return a


def parse_slice_axis(slice_axis):
    """The one reading of a slice axis (the Slicer extension uses it too): None, "auto" or -1 -> None
    (automatic); "i"/"j"/"k" (any case) or 0/1/2 -> that IJK axis. Anything else: InvalidArgumentError."""
    if slice_axis is None or slice_axis == -1:
        return None
    if isinstance(slice_axis, str):
        name = slice_axis.strip().lower()
        if name == "auto":
            return None
        if name not in _AXES:
            raise InvalidArgumentError(
                f"slice axis {slice_axis!r}: expected 'auto', 'i', 'j', 'k', 0, 1, 2 or None",
                status=DSPNET_ERROR_INVALID_ARGUMENT,
            )
        return _AXES[name]
    try:
        axis = int(slice_axis)
    except (TypeError, ValueError):
        axis = None
    if axis not in (0, 1, 2) or axis != slice_axis:
        raise InvalidArgumentError(
            f"slice axis {slice_axis!r}: expected 0 (i), 1 (j), 2 (k) or None (auto)",
            status=DSPNET_ERROR_INVALID_ARGUMENT,
        )
    return axis


def _axis_value(slice_axis):
    """The C ABI's slice_axis: -1 for automatic."""
    axis = parse_slice_axis(slice_axis)
    return -1 if axis is None else axis


def parse_extent(extent):
    """ "auto", "all", "A:B" or (A, B) -> (mode, first, last). Slice indices are inclusive."""
    if extent is None or extent == "auto":
        return EXTENT_AUTO, 0, 0
    if extent == "all":
        return EXTENT_ALL, 0, 0
    if isinstance(extent, str):
        a, sep, b = extent.partition(":")
        if not sep:
            raise InvalidArgumentError(
                f"extent {extent!r}: expected 'auto', 'all' or 'A:B'", status=DSPNET_ERROR_INVALID_ARGUMENT
            )
        extent = (a, b)
    try:
        first, last = (int(v) for v in extent)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            f"extent {extent!r}: expected 'auto', 'all', 'A:B' or (A, B)", status=DSPNET_ERROR_INVALID_ARGUMENT
        ) from None
    if first < 0 or last < first:
        raise InvalidArgumentError(f"extent {first}:{last}: expected 0 <= A <= B", status=DSPNET_ERROR_INVALID_ARGUMENT)
    return EXTENT_RANGE, first, last


def _set_head(opts, head):
    """Copy ``head`` ({official name: value}) into ``opts.head``; the library checks the ranges."""
    unknown = sorted(set(head) - set(HEAD_KEYS))
    if unknown:
        raise InvalidArgumentError(
            f"unknown head option(s) {', '.join(unknown)}; expected {', '.join(HEAD_KEYS)}",
            status=DSPNET_ERROR_INVALID_ARGUMENT,
        )
    if opts.struct_size < ctypes.sizeof(dspnet_segment_options_t):
        raise LibraryNotFoundError("this libdspnet has no head options (libdspnet 0.4 or newer needed)")
    for key, value in head.items():
        try:
            if key == "w1_w2_w3":
                parts = value.split(":") if isinstance(value, str) else list(value)
                if len(parts) != 3:
                    raise ValueError
                opts.head.w1_w2_w3[:] = [float(v) for v in parts]
            elif key in ("fg_thresh", "bg_thresh", "alpha", "alpha_bg"):
                setattr(opts.head, key, float(value))
            else:
                v = int(value)
                if (isinstance(value, float) and v != value) or not 0 <= v < 2**32:
                    raise ValueError
                setattr(opts.head, key, v)
        except (TypeError, ValueError):
            raise InvalidArgumentError(
                f"head option {key}={value!r}: expected " + ("three numbers" if key == "w1_w2_w3" else "a number"),
                status=DSPNET_ERROR_INVALID_ARGUMENT,
            ) from None


def _c_options(lib, slice_axis, extent, modality, fov, components, classes, propagation, head=None):
    """A filled ``dspnet_segment_options_t`` and the class buffer it points to (keep both alive)."""
    opts = dspnet_segment_options_t()
    lib._cdll.dspnet_segment_options_init(ctypes.byref(opts))
    if head:
        _set_head(opts, head)
    opts.slice_axis = _axis_value(slice_axis)
    try:
        opts.modality = MODALITY[str(modality).lower()]
        opts.fov = FOV[fov]
        opts.components = COMPONENTS[components]
        opts.propagation = PROPAGATION[propagation]
    except KeyError as e:
        raise InvalidArgumentError(f"unknown option value {e}", status=DSPNET_ERROR_INVALID_ARGUMENT) from None
    opts.extent, opts.extent_first, opts.extent_last = parse_extent(extent)
    class_buf = None
    if classes is not None and len(classes) > 0:  # a numpy array of classes has no truth value
        class_buf = (ctypes.c_uint16 * len(classes))(*[int(c) for c in classes])
        opts.classes = ctypes.cast(class_buf, ctypes.POINTER(ctypes.c_uint16))
        opts.num_classes = len(classes)
    return opts, class_buf


def _output_array(out, shape, index_order):
    """(array the library writes, in [k, j, i]; the caller's array or None)."""
    if out is None:
        return np.empty(shape, dtype=np.uint16), None
    out_kji = out.T if index_order == "ijk" else out
    if (
        not isinstance(out_kji, np.ndarray)
        or out_kji.dtype != np.uint16
        or out_kji.shape != shape
        or not out_kji.flags.c_contiguous
        or not out_kji.flags.writeable
    ):
        raise ValueError("out must be a writeable uint16 array of the image's shape, contiguous in the image's order")
    return out_kji, out


def _run(lib, what, call, opts, max_slices, progress, cancel):
    """Run ``call(opts_ref, summary_ref)`` with the progress/cancel bridge; returns (summary_c, confidence
    buffer, seconds) or raises. Exceptions from ``progress`` cancel the run and are re-raised."""
    state = {"error": None, "total": None}
    is_cancelled = None
    if cancel is not None:
        is_cancelled = cancel.is_set if hasattr(cancel, "is_set") else cancel

    def _progress(_user_data, done, total):
        # Must never let an exception escape into C: remember it and cancel instead.
        try:
            state["total"] = total
            if progress is not None:
                progress(int(done), int(total))
            if is_cancelled is not None and is_cancelled():
                return 1
            return 0
        except BaseException as e:  # noqa: BLE001 - re-raised after the call
            state["error"] = e
            return 1

    callback = None
    if progress is not None or is_cancelled is not None:
        callback = PROGRESS_FN(_progress)  # kept alive by this frame for the whole call
        opts.progress = callback

    summary_c = dspnet_segment_summary_t()
    summary_c.struct_size = ctypes.sizeof(dspnet_segment_summary_t)
    confidence = np.full(max(int(max_slices), 1), np.nan, dtype=np.float32)
    summary_c.slice_confidence = confidence.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    summary_c.slice_confidence_capacity = confidence.size
    t0 = time.perf_counter()
    status = call(ctypes.byref(opts), ctypes.byref(summary_c))
    seconds = time.perf_counter() - t0
    if status != DSPNET_OK and state["error"] is not None:
        raise state["error"]
    lib.check(status, what)
    del callback
    return summary_c, confidence, seconds, state


def _summary(summary_c, confidence):
    """A :class:`Summary` from what the library filled (an older library fills the first version only)."""
    s = Summary(
        slice_axis=summary_c.slice_axis,
        modality={1: "ct", 2: "mri"}.get(summary_c.modality, str(summary_c.modality)),
        num_classes=summary_c.num_classes,
        slices_processed=summary_c.slices_processed,
        labelled_voxels=summary_c.labelled_voxels,
        seconds=summary_c.seconds,
    )
    if summary_c.struct_size > _SUMMARY_V1_SIZE:
        conf = confidence[: min(summary_c.num_slices, confidence.size)].copy()
        conf[conf < 0] = np.nan
        s.slice_confidence = conf
        s.suggested_slices = [int(summary_c.suggested_slices[i]) for i in range(summary_c.num_suggested)]
    return s


def _image_volume(image, index_order):
    """(C-ready [k, j, i] array, dspnet_volume_t without spacing) from ``image`` in ``index_order``."""
    if index_order not in ("kji", "ijk"):
        raise ValueError("index_order must be 'kji' or 'ijk'")
    img = np.asarray(image)
    if index_order == "ijk":  # a view: [i, j, k] Fortran order is [k, j, i] C order
        img = img.T
    if img.ndim != 3:
        raise ShapeError(f"image must be 3D, got shape {img.shape}", status=DSPNET_ERROR_SHAPE)
    img = _as_image(img)
    vol = dspnet_volume_t()
    vol.data = img.ctypes.data
    vol.dtype = _DTYPES[img.dtype]
    nk, nj, ni = img.shape
    vol.dims[:] = (ni, nj, nk)
    return img, vol


def _spacing(spacing_ijk):
    spacing = tuple(float(s) for s in spacing_ijk)
    if len(spacing) != 3:
        raise ValueError("spacing_ijk must have 3 values (i, j, k)")
    return spacing


def segment(
    model,
    image,
    support,
    spacing_ijk,
    *,
    slice_axis=None,
    extent="auto",
    modality="auto",
    fov="slice",
    components="support",
    classes=None,
    progress=None,
    cancel=None,
    out=None,
    index_order="kji",
    propagation="memory",
    head=None,
):
    """Segment ``image`` from the labelled slices in ``support`` (``dspnet_segment``).

    - ``image``: 3D array, ``[k, j, i]`` (default) or ``[i, j, k]`` with ``index_order="ijk"``; any of
      uint8/int8/uint16/int16/uint32/int32/float32/float64 is passed as is (other dtypes are converted).
    - ``support``: integer labels on the same grid; the slices holding non-zero labels are the support
      slices, each non-zero value a class. Copied to uint16 unless it already is C-contiguous uint16.
    - ``spacing_ijk``: voxel size along i, j, k in mm (``volumeNode.GetSpacing()``, not reversed).
    - ``slice_axis``: None/"auto", 0/"i", 1/"j", 2/"k" (IJK axes, whatever ``index_order``).
    - ``extent``: "auto", "all", "A:B" or (A, B), inclusive slice indices along the slice axis.
    - ``propagation``: "memory" (follow the structure slice by slice; with extent "auto" it stops where
      the structure ends) or "independent" (each slice on its own, the paper's protocol).
    - ``head``: prototype-head parameters under the official code's names, e.g. ``{"avg_sp_area": 50}``
      (keys in :data:`HEAD_KEYS`; ``w1_w2_w3`` takes three numbers); the others keep their defaults.
    - ``progress(done, total)``: called on this thread before any work and after each slice; if it
      raises, the run is cancelled and the exception re-raised.
    - ``cancel``: a ``threading.Event`` or a callable returning True to cancel (checked at each slice);
      a cancelled run raises :class:`CancelledError`.
    - ``out``: optional uint16 output array of the image's shape and order (may be ``support`` itself).

    Returns ``(labels, summary)``: a uint16 array shaped like ``image`` and a :class:`Summary`.
    To segment one image several times (corrections), use a :class:`Session`: it keeps the encoded slices.
    """
    if not isinstance(model, Model):
        raise TypeError("model must be a dspnet.Model")
    lib = model.library
    img, vol = _image_volume(image, index_order)
    sup = np.asarray(support)
    sup = _as_u16(sup.T if index_order == "ijk" else sup, img.shape, "support")
    out_kji, out_user = _output_array(out, img.shape, index_order)
    vol.spacing[:] = _spacing(spacing_ijk)
    opts, class_buf = _c_options(lib, slice_axis, extent, modality, fov, components, classes, propagation, head)

    if lib.has_summary:

        def call(o, sm):
            return lib._cdll.dspnet_segment_with_summary(
                model.handle, ctypes.byref(vol), sup.ctypes.data, out_kji.ctypes.data, o, sm
            )
    else:

        def call(o, _sm):
            return lib._cdll.dspnet_segment(model.handle, ctypes.byref(vol), sup.ctypes.data, out_kji.ctypes.data, o)

    summary_c, confidence, seconds, state = _run(lib, "dspnet_segment", call, opts, max(img.shape), progress, cancel)
    del class_buf
    if lib.has_summary:
        summary = _summary(summary_c, confidence)
    else:
        summary = Summary(
            slices_processed=state["total"], seconds=seconds, labelled_voxels=int(np.count_nonzero(out_kji))
        )
    if out_user is not None:
        return out_user, summary
    return (out_kji.T if index_order == "ijk" else out_kji), summary


class Session(_Owned):
    """An interactive session (``dspnet_session_t``): the library keeps its own copy of ``image`` and the
    slices it encodes, so that segmenting again after a correction re-runs the prototype head only.

    ``image`` (indexed ``[i, j, k]``, or ``[k, j, i]`` with ``index_order="kji"``) and ``spacing_ijk`` as for
    :meth:`Model.segment`; ``segment`` returns ``(labels, summary)``. ``feature_budget_bytes``: memory
    for encoded slices (0 = the library default, 1 GiB; at least one slice, 1 MiB for the default model).
    One segmentation at a time: a call while another runs on the same session raises :class:`BusyError`.
    The session keeps its model alive. Close it (or use ``with``) to free the memory at once."""

    _free = "dspnet_session_free"

    def __init__(self, model, image, spacing_ijk, *, index_order="ijk", feature_budget_bytes=0):
        if not isinstance(model, Model):
            raise TypeError("model must be a dspnet.Model")
        self.library = lib = model.library
        if not lib.has_sessions:
            raise LibraryNotFoundError(f"{lib.path} has no sessions (libdspnet 0.2 or newer needed)")
        self.model = model
        self.index_order = index_order
        img, vol = _image_volume(image, index_order)
        vol.spacing[:] = _spacing(spacing_ijk)
        self.shape = img.shape  # [k, j, i]
        opts = dspnet_session_options_t()
        lib._cdll.dspnet_session_options_init(ctypes.byref(opts))
        opts.feature_budget_bytes = int(feature_budget_bytes)
        handle = ctypes.c_void_p()
        status = lib._cdll.dspnet_session_create(
            model.handle, ctypes.byref(vol), ctypes.byref(opts), ctypes.byref(handle)
        )
        lib.check(status, "dspnet_session_create")
        self._handle = handle

    @property
    def handle(self):
        if getattr(self, "_handle", None) is None or not self._handle.value:
            raise ValueError("the session has been closed")
        return self._handle

    def segment(
        self,
        support,
        *,
        slice_axis=None,
        extent="auto",
        modality="auto",
        fov="slice",
        components="support",
        classes=None,
        progress=None,
        cancel=None,
        out=None,
        propagation="memory",
        head=None,
    ):
        """:func:`segment` on the session's image (same options, same results voxel for voxel)."""
        lib = self.library
        sup = np.asarray(support)
        if self.index_order == "ijk":
            sup = sup.T
        sup = _as_u16(sup, self.shape, "support")
        out_kji, out_user = _output_array(out, self.shape, self.index_order)
        opts, class_buf = _c_options(lib, slice_axis, extent, modality, fov, components, classes, propagation, head)
        handle = self.handle

        def call(o, sm):
            return lib._cdll.dspnet_session_segment_with_summary(handle, sup.ctypes.data, out_kji.ctypes.data, o, sm)

        summary_c, confidence, _seconds, _state = _run(
            lib, "dspnet_session_segment", call, opts, max(self.shape), progress, cancel
        )
        del class_buf
        summary = _summary(summary_c, confidence)
        if out_user is not None:
            return out_user, summary
        return (out_kji.T if self.index_order == "ijk" else out_kji), summary

    def info(self):
        """What the session holds: dict of dims (i, j, k), feature_budget_bytes, cached_slices, cached_bytes,
        image_bytes, slices_encoded, slices_reused, chain_bytes, chains_replayed."""
        c = dspnet_session_info_t()
        c.struct_size = ctypes.sizeof(c)
        self.library.check(self.library._cdll.dspnet_session_info(self.handle, ctypes.byref(c)), "dspnet_session_info")
        d = {
            name: getattr(c, name) for name, _ in dspnet_session_info_t._fields_ if name not in ("struct_size", "dims")
        }
        d["dims"] = tuple(c.dims)
        return d


def segment_files(
    model,
    image_path,
    support_path,
    output_path,
    *,
    slice_axis=None,
    axis=None,
    extent="auto",
    modality="auto",
    fov="slice",
    components="support",
    classes=None,
    progress=None,
    cancel=None,
    propagation="memory",
    head=None,
):
    """One study from files to a file (``dspnet_segment_files``): read the image (NIfTI, NRRD or a DICOM
    folder) and its painted labels, segment, and write the labels to ``output_path`` (.nii, .nii.gz,
    .nrrd, .seg.nrrd) with the image's geometry, atomically (never a partial file). Exactly what
    ``dspnet segment`` and each study of ``dspnet batch`` do. Options as :func:`segment`; returns a
    :class:`Summary`."""
    if not isinstance(model, Model):
        raise TypeError("model must be a dspnet.Model")
    lib = model.library
    if not hasattr(lib._cdll, "dspnet_segment_files"):
        raise LibraryNotFoundError(f"{lib.path} cannot segment files (libdspnet 0.3 or newer needed)")
    if axis is not None:
        slice_axis = axis
    paths = [os.fsencode(os.fspath(p)) for p in (image_path, support_path, output_path)]
    opts, class_buf = _c_options(lib, slice_axis, extent, modality, fov, components, classes, propagation, head)

    def call(o, sm):
        return lib._cdll.dspnet_segment_files(model.handle, paths[0], paths[1], paths[2], o, sm)

    # The slice count is known only once the image is read: room for the largest plausible volume axis.
    summary_c, confidence, _seconds, _state = _run(lib, "dspnet_segment_files", call, opts, 16384, progress, cancel)
    del class_buf
    return _summary(summary_c, confidence)


def version():
    """(library version string, ABI version) of the library :func:`load_library` finds."""
    lib = load_library()
    return lib.version, lib.abi_version
