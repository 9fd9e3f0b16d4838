"""dspnet.mitk on the real MITK runtime (PyPI mitk-python): geometry (oblique, flipped), labels' values,
names, colours and groups kept, voxels equal to `dspnet segment`, the module's command line, bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest

import mitk
import dspnet
import dspnet.mitk as dm

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CT = os.path.join(ROOT, "tests", "data", "ct-liver")
EXTENT = "62:66"
THETA = np.deg2rad(20)
DIRECTIONS = {
    "identity": np.eye(3),
    "oblique": np.array([[np.cos(THETA), -np.sin(THETA), 0], [np.sin(THETA), np.cos(THETA), 0], [0, 0, 1]]),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
}


@pytest.fixture(scope="module")
def model():
    with dspnet.Model(os.environ["DSPNET_TEST_WEIGHTS"]) as m:
        yield m


@pytest.fixture(scope="module")
def ct():
    image = mitk.Image.load(os.path.join(CT, "image.nii.gz"))
    truth = np.asarray(mitk.Image.load(os.path.join(CT, "labels.nii.gz")).array).astype(np.uint16)
    return np.array(image.array, dtype=np.float32), image.spacing, truth  # (z, y, x)


def make_case(tmp, ct, direction):
    """An image with `direction`, saved as NRRD, and a two-group segmentation painted on slice 64."""
    voxels, spacing, truth = ct
    image = mitk.Image.from_numpy(voxels, spacing=spacing, origin=(10.0, -20.0, 30.0), direction=DIRECTIONS[direction])
    image_path = str(tmp / f"image-{direction}.nrrd")
    image.save(image_path)
    image = mitk.Image.load(image_path)
    seg = mitk.MultiLabelSegmentation(image)
    liver = seg.add_label("liver", (0.8, 0.2, 0.2), 0)
    marker = seg.add_label("marker", (0.1, 0.9, 0.2), 0)
    g1 = seg.add_group("other group")
    kept = seg.add_label("kept", (0.2, 0.2, 0.9), g1)
    group0 = np.zeros(voxels.shape, np.uint16)
    group0[64] = np.where(truth[64] > 0, liver.value, 0)
    group0[10, 5:9, 5:9] = marker.value  # a label not asked for: must stay as it is
    seg.set_group_image(0, group0)
    group1 = np.zeros(voxels.shape, np.uint16)
    group1[64] = np.where(truth[64] > 0, kept.value, 0)
    seg.set_group_image(g1, group1)
    return image, image_path, seg, (liver.value, marker.value, kept.value)


def cli_labels(tmp, image, image_path, support, name):
    """`dspnet segment` on the same image file and the painted voxels as a label image."""
    sup = mitk.Image.from_numpy(support, spacing=image.spacing, origin=image.origin, direction=image.direction)
    sup_path, out = str(tmp / f"{name}-support.nrrd"), str(tmp / f"{name}-cli.nrrd")
    sup.save(sup_path)
    p = subprocess.run(
        [
            os.environ["DSPNET_CLI"],
            "segment",
            image_path,
            "--support",
            sup_path,
            "-o",
            out,
            "--weights",
            os.environ["DSPNET_TEST_WEIGHTS"],
            "--device",
            "cpu",
            "--extent",
            EXTENT,
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    return np.asarray(mitk.Image.load(out).array)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_geometry_labels_and_voxels(model, ct, tmp_path, direction):
    image, image_path, seg, (liver, marker, kept) = make_case(tmp_path, ct, direction)
    result = dm.segment(image, seg, model=model, labels=[liver], extent=EXTENT)
    assert isinstance(result, mitk.MultiLabelSegmentation) and result is not seg
    np.testing.assert_allclose(result.direction, DIRECTIONS[direction], atol=1e-6)
    np.testing.assert_allclose(result.origin, image.origin, atol=1e-6)
    np.testing.assert_allclose(result.spacing, image.spacing, atol=1e-6)
    assert [(l.value, l.name) for l in result.labels] == [(liver, "liver"), (marker, "marker"), (kept, "kept")]
    assert np.allclose(result.get_label(liver).color, (0.8, 0.2, 0.2), atol=1e-6)
    assert result.num_groups == 2 and result.get_group_name(1) == "other group"
    assert result.get_group_of_label(kept) == 1
    before = np.asarray(seg.get_group_image(0).array)
    after = np.asarray(result.get_group_image(0).array)
    assert (after[10, 5:9, 5:9] == marker).all(), "a label not asked for was changed"
    assert np.array_equal(after[64], before[64]), "the painted slice is kept"
    assert np.array_equal(np.asarray(result.get_group_image(1).array), np.asarray(seg.get_group_image(1).array)), (
        "a group without chosen labels is left as it was"
    )
    # Voxel for voxel what the command line gives on the same files.
    support = np.where(before == liver, before, 0).astype(np.uint16)
    expected = cli_labels(tmp_path, image, image_path, support, direction)
    assert np.array_equal(np.where(after == marker, 0, after), expected)
    assert np.count_nonzero(expected[63]) > 0, "the liver was propagated beyond the painted slice"
    assert mitk.relations.segmentation.get_source_image_relations(result), "related to its source image"


def test_every_painted_label_by_default_and_round_trip(model, ct, tmp_path):
    image, image_path, seg, (liver, marker, kept) = make_case(tmp_path, ct, "oblique")
    result = dm.segment(image, seg, model=model, extent=EXTENT)
    assert np.count_nonzero(np.asarray(result.get_group_image(1).array)[63] == kept) > 0, "group 1 segmented too"
    path = tmp_path / "result.nrrd"
    dm.save_atomically(result, path)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    [back] = mitk.IOUtil.load(str(path))
    assert isinstance(back, mitk.MultiLabelSegmentation)
    assert [(l.value, l.name) for l in back.labels] == [(l.value, l.name) for l in result.labels]
    for g in range(2):
        assert np.array_equal(np.asarray(back.get_group_image(g).array), np.asarray(result.get_group_image(g).array))
    np.testing.assert_allclose(back.direction, DIRECTIONS["oblique"], atol=1e-5)


def test_command_line(ct, tmp_path):
    image, image_path, seg, (liver, marker, kept) = make_case(tmp_path, ct, "flipped")
    seg_path, out = str(tmp_path / "painted.nrrd"), tmp_path / "out.nrrd"
    seg.save(seg_path)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dspnet.mitk",
            image_path,
            seg_path,
            "-o",
            str(out),
            "--weights",
            os.environ["DSPNET_TEST_WEIGHTS"],
            "--labels",
            str(liver),
            "--extent",
            EXTENT,
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    [written] = mitk.IOUtil.load(str(out))
    expected = dm.segment(
        mitk.Image.load(image_path),
        mitk.MultiLabelSegmentation.load(seg_path),
        model=dspnet.Model(os.environ["DSPNET_TEST_WEIGHTS"]),
        labels=[liver],
        extent=EXTENT,
    )
    assert np.array_equal(np.asarray(written.get_group_image(0).array), np.asarray(expected.get_group_image(0).array))
    # A failure writes nothing and says why.
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "dspnet.mitk",
            image_path,
            seg_path,
            "-o",
            str(tmp_path / "bad.nrrd"),
            "--weights",
            os.environ["DSPNET_TEST_WEIGHTS"],
            "--labels",
            "77",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "77" in p.stderr and not (tmp_path / "bad.nrrd").exists()


def test_result_relates_to_its_source_image(model):
    image = mitk.Image.from_numpy(np.linspace(0, 200, 8 * 32 * 32, dtype=np.float32).reshape(8, 32, 32))
    seg = mitk.MultiLabelSegmentation()
    seg.initialize(image)  # geometry only: no source-image relation
    assert not mitk.relations.segmentation.get_source_image_relations(seg)
    label = seg.add_label("a", (1.0, 0.0, 0.0), 0)
    group = np.zeros((8, 32, 32), np.uint16)
    group[4, 10:20, 10:20] = label.value
    seg.set_group_image(0, group)
    result = dm.segment(image, seg, model=model, extent="3:5")
    assert len(mitk.relations.segmentation.get_source_image_relations(result)) == 1


def test_bad_input(model, ct, tmp_path):
    image, _, seg, (liver, marker, kept) = make_case(tmp_path, ct, "identity")
    voxels, spacing, _ = ct
    other = mitk.Image.from_numpy(voxels, spacing=(2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="geometry"):
        dm.segment(other, seg, model=model)
    four_d = mitk.Image.from_numpy(np.zeros((2,) + voxels.shape[:2] + (4,), np.float32))
    with pytest.raises(ValueError):
        dm.segment(four_d, seg, model=model)
    empty = mitk.MultiLabelSegmentation(image)
    empty.add_label("nothing", (1.0, 0.0, 0.0), 0)
    with pytest.raises(ValueError, match="not painted|no label"):
        dm.segment(image, empty, model=model)
    with pytest.raises(ValueError, match="99"):
        dm.segment(image, seg, model=model, labels=[99])
