"""The face templates: LBP identical to scikit-image's nri_uniform, block histograms, chi-square."""
import numpy as np
import pytest
from skimage import data as skdata
from skimage.feature import local_binary_pattern

from apps.faceverify import data, features


def skimage_codes(img):
    return local_binary_pattern(img, features.P, features.R, method="nri_uniform").astype(np.uint8)


def test_lbp_codes_match_skimage_nri_uniform_on_every_lfw_face():
    raw = skdata.lfw_subset()[: data.N_FACES]
    for face in raw:
        img = np.rint(face * 255).astype(np.uint8)
        np.testing.assert_array_equal(features.lbp_codes(img), skimage_codes(img))


def test_lbp_codes_match_skimage_on_enlarged_faces_and_probes():
    rng = np.random.default_rng(3)
    faces = data.lfw_faces()
    for i in range(0, data.N_FACES, 10):
        for img in (faces[i], data.perturb(faces[i], rng)):
            np.testing.assert_array_equal(features.lbp_codes(img), skimage_codes(img))


def test_lbp_ties_fall_like_skimage_on_flat_and_low_contrast_images():
    # Many neighbours equal to their centre: the bilinear diagonal must round exactly as
    # skimage's C loop does for the >= test to agree.
    rng = np.random.default_rng(4)
    images = [np.full((9, 11), 77, np.uint8), rng.integers(0, 3, (40, 37)).astype(np.uint8),
              rng.integers(250, 256, (17, 64)).astype(np.uint8)]
    for img in images:
        np.testing.assert_array_equal(features.lbp_codes(img), skimage_codes(img))


def test_label_table_has_58_uniform_labels_and_one_for_the_rest():
    labels = features.LABELS
    assert labels.max() == 58 and features.N_BINS == 59
    uniform = [c for c in range(256) if labels[c] != features.NON_UNIFORM]
    assert len(uniform) == 58
    assert len(set(labels[uniform].tolist())) == 58   # no two uniform patterns share a label


def test_block_histograms_are_skimage_codes_counted_per_block():
    img = data.lfw_faces()[17]
    codes = skimage_codes(img)
    hist = features.extract(img, 16)
    assert hist.dtype == np.uint16 and hist.size == 8 * 8 * 59
    blocks = hist.reshape(8, 8, 59)
    for by in range(8):
        for bx in range(8):
            tile = codes[by * 16:(by + 1) * 16, bx * 16:(bx + 1) * 16]
            np.testing.assert_array_equal(blocks[by, bx], np.bincount(tile.ravel(), minlength=59))


def test_partial_blocks_at_the_edges_are_dropped():
    img = np.random.default_rng(5).integers(0, 256, (40, 50)).astype(np.uint8)
    hist = features.extract(img, 16)
    assert hist.size == features.template_bins(img.shape, 16) == 2 * 3 * 59
    assert hist.reshape(-1, 59).sum(axis=1).tolist() == [256] * 6


def test_image_smaller_than_a_block_is_refused():
    with pytest.raises(ValueError, match="smaller than one"):
        features.extract(np.zeros((10, 10), np.uint8), 16)


def test_chi_square_is_zero_for_itself_symmetric_and_two_for_disjoint():
    t = data.face_templates()
    assert features.chi_square(t[0], t[0]) == 0.0
    assert features.chi_square(t[0], t[1]) == pytest.approx(features.chi_square(t[1], t[0]))
    a = np.zeros(59, np.uint16)
    b = np.zeros(59, np.uint16)
    a[0], b[1] = 256, 256
    assert features.chi_square(a, b, 16) == pytest.approx(2.0)


def test_chi_square_refuses_templates_of_different_sizes():
    with pytest.raises(ValueError, match="differ"):
        features.chi_square(np.zeros(59), np.zeros(118))
