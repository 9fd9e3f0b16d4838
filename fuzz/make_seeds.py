#!/usr/bin/env python3
"""Writes the fuzzers' starting inputs (fuzz/seeds/TARGET/) from scratch, with the standard library only:
small valid files of every format and encoding the readers support, so that the fuzzers start deep in
each parser. The committed corpus (fuzz/corpus) is what the fuzzers grew from these and minimised.
Usage: python3 fuzz/make_seeds.py [REPO_ROOT]"""

import gzip
import io
import os
import pickle
import struct
import sys
import zipfile

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
seeds = os.path.join(root, "fuzz", "seeds")


def put(target, name, data):
    d = os.path.join(seeds, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


DIMS = (4, 3, 2)
VOXELS = struct.pack("<24h", *range(-4, 20))
LABELS = struct.pack("<24H", *([0] * 12 + [1, 1, 2, 0] * 3))


def nifti1(datatype=4, bitpix=16, data=VOXELS, qform=True, sform=False, magic=b"n+1\0", vox_offset=352.0):
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *DIMS, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1.0, 0.8, 0.9, 2.5, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, vox_offset)
    struct.pack_into("<ff", h, 112, 1.0, 0.0)  # scl_slope, scl_inter
    struct.pack_into("<hh", h, 252, 1 if qform else 0, 1 if sform else 0)
    struct.pack_into("<6f", h, 256, 0.0, 0.0, 1.0, -10.0, 5.0, 3.0)  # quatern b c d, qoffset x y z
    for r, row in enumerate(((0.8, 0, 0, -10), (0, 0.9, 0, 5), (0, 0, 2.5, 3))):
        struct.pack_into("<4f", h, 280 + 16 * r, *row)
    h[344:348] = magic
    return bytes(h) + b"\0" * 4 + data


def nifti2(data=VOXELS):
    h = bytearray(540)
    struct.pack_into("<i", h, 0, 540)
    h[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", h, 12, 4, 16)
    struct.pack_into("<8q", h, 16, 3, *DIMS, 1, 1, 1, 1)
    struct.pack_into("<8d", h, 104, 1.0, 0.8, 0.9, 2.5, 1, 1, 1, 1)
    struct.pack_into("<q", h, 168, 544)
    struct.pack_into("<dd", h, 176, 1.0, 0.0)
    struct.pack_into("<ii", h, 344, 0, 1)  # qform_code, sform_code
    for r, row in enumerate(((0.8, 0, 0, -10), (0, 0.9, 0, 5), (0, 0, 2.5, 3))):
        struct.pack_into("<4d", h, 400 + 32 * r, *row)
    return bytes(h) + b"\0" * 4 + data


for target in ("nifti", "nifti_gz"):
    put(target, "int16_qform.nii", nifti1())
    put(target, "uint16_labels_sform.nii", nifti1(512, 16, LABELS, qform=False, sform=True))
    put(target, "float32.nii", nifti1(16, 32, struct.pack("<24f", *[x * 0.5 for x in range(24)])))
    put(target, "uint8.nii", nifti1(2, 8, bytes(range(24))))
    put(target, "nifti2.nii", nifti2())
put("nifti", "gzipped.nii.gz", gzip.compress(nifti1()))


def nrrd_header(encoding, kind="short", extra=""):
    return (
        f"NRRD0004\ntype: {kind}\ndimension: 3\nspace: left-posterior-superior\nsizes: 4 3 2\n"
        f"space directions: (0.8,0,0) (0,0.9,0) (0,0,2.5)\nspace origin: (-10,5,3)\nendian: little\n"
        f"encoding: {encoding}\n{extra}"
    ).encode()


put("nrrd", "raw.nrrd", nrrd_header("raw") + b"\n" + VOXELS)
put("nrrd", "gzip.nrrd", nrrd_header("gzip") + b"\n" + gzip.compress(VOXELS))
put("nrrd", "ascii.nrrd", nrrd_header("ascii") + b"\n" + " ".join(str(v) for v in range(-4, 20)).encode() + b"\n")
put(
    "nrrd",
    "float_kinds.nrrd",
    nrrd_header("raw", "float", "kinds: domain domain domain\nspace units: \"mm\" \"mm\" \"mm\"\n")
    + b"\n"
    + struct.pack("<24f", *range(24)),
)
put("nrrd_detached", "raw.nhdr", nrrd_header("raw", extra="data file: d.raw\n") + b"\0" + VOXELS)
put("nrrd_detached", "gzip.nhdr", nrrd_header("gzip", extra="data file: d.raw.gz\n") + b"\0" + VOXELS)
put(
    "nrrd_detached",
    "byteskip.nhdr",
    nrrd_header("raw", extra="byte skip: 2\ndata file: d.raw\n") + b"\0" + b"\0\0" + VOXELS,
)

seg = (
    nrrd_header(
        "gzip",
        "unsigned char",
        "kinds: domain domain domain\nSegment0_ID:=Segment_1\nSegment0_Name:=Liver\nSegment0_LabelValue:=1\n"
        "Segment0_Layer:=0\nSegment0_Color:=0.8 0.2 0.2\nSegment1_ID:=Segment_2\nSegment1_Name:=Tumour\n"
        "Segment1_LabelValue:=2\nSegment1_Layer:=0\nSegmentation_MasterRepresentation:=Binary labelmap\n",
    )
    + b"\n"
    + gzip.compress(bytes(12) + bytes([1, 1, 2, 0] * 3))
)
put("seg_nrrd", "two_segments.seg.nrrd", seg)
layers = (
    "NRRD0004\ntype: unsigned char\ndimension: 4\nspace: left-posterior-superior\nsizes: 2 4 3 2\n"
    "space directions: none (0.8,0,0) (0,0.9,0) (0,0,2.5)\nspace origin: (-10,5,3)\nkinds: list domain domain domain\n"
    "encoding: raw\nSegment0_ID:=a\nSegment0_Name:=A\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n"
    "Segment1_ID:=b\nSegment1_Name:=B\nSegment1_LabelValue:=1\nSegment1_Layer:=1\n\n"
).encode() + bytes(range(2)) * 24
put("seg_nrrd", "two_layers.seg.nrrd", layers)

with open(os.path.join(root, "tests", "data", "mri-brain-dicom", "brain_002.dcm"), "rb") as f:
    put("dicom", "brain_002.dcm", f.read())


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if metadata:
        header["__metadata__"] = metadata
    import json

    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


put(
    "safetensors",
    "one_tensor.safetensors",
    safetensors(
        {"encoder.localconv.weight": ("F32", [2, 2, 1, 1], struct.pack("<4f", 1, 0, 0, 1))}, {"dspnet.depth": "50"}
    ),
)
put("safetensors", "f16.safetensors", safetensors({"backbone.conv1.weight": ("F16", [1, 1, 1, 2], b"\0<\0<")}))
put("safetensors", "empty.safetensors", safetensors({}, {"format": "pt"}))


def pth_with(pickled):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


# A hand-written protocol-2 pickle of {"w": torch._utils._rebuild_tensor_v2(
#   persistent_load(("storage", torch.FloatStorage, "0", "cpu", 4)), 0, (2, 2), (2, 1), False, OrderedDict())}.
pk = (
    b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storageq\x03"
    b"ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x04tq\x07QK\x00K\x02K\x02\x86q\x08"
    b"K\x02K\x01\x86q\t\x89ccollections\nOrderedDict\nq\x0b)Rq\x0ctq\rRq\x0es."
)
put("pth", "one_tensor.pth", pth_with(pk))
put("pth", "plain_dict.pth", pth_with(pickle.dumps({"a": [1, 2.5, "x", None, True]}, protocol=2)))
with open(os.path.join(root, "tests", "fixtures", "golden", "official_subset_zipedge.pth"), "rb") as f:
    put("pth", "official_subset_zipedge.pth", f.read())

# capi: the harness reads its own fields from the bytes; a few spread starting points.
for i, mode in enumerate((3, 11, 19, 0, 1, 2, 4, 27)):
    put("capi", f"mode{mode}", bytes([mode, 5, 6, 3, 7, 0, 0, 0, 40, 41, 42]) + bytes(range(i, i + 64)) + bytes(140))
print("seeds written to", seeds)
