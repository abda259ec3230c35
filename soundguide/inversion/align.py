"""Photos to a generator's framing: FFHQ's face alignment, and a centre crop for the rest.

A GAN inverts a photo well only when the photo is framed as its training set
was. FFHQ (and so the StyleGAN2 FFHQ models and e4e) framed every face by an
oriented square computed from the eye centres and mouth corners, cut out of
the photo with reflected, blurred padding where the square leaves it;
:func:`align_face` reproduces that recipe (NVlabs' ``recreate_aligned_images``,
``rotate_level=True``, no random shift) with the same constants, and
:func:`align_photo` runs a landmark detector first and aligns its main face.
Generators of other pictures (landscapes, LSUN) get :func:`center_crop`.

Written by hand with PIL, numpy and scipy, as the original is: kornia can warp
by a homography, but bit-for-bit framing with FFHQ's (shrink with a Lanczos
filter, crop, pad, QUAD transform, Lanczos resize) needs PIL's own filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from soundguide.core.errors import ImageError
from soundguide.inversion.landmarks import FaceLandmarks, LandmarkDetector, default_detector

Quad = tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]

COMPARABLE_AREA = 0.5
"""Faces at least this fraction of the largest face's box area count as equally large
for :func:`main_face`; the detector's score then decides among them."""


@dataclass(frozen=True)
class AlignedFace:
    """A face photo framed as FFHQ's faces are."""

    image: Image.Image
    """RGB, ``output_size`` x ``output_size``."""
    quad: Quad
    """The square cut out, in the photo's pixels: its top-left, bottom-left,
    bottom-right and top-right corners as they appear in the output."""
    landmarks: FaceLandmarks
    """The landmarks the square was computed from."""


def face_quad(landmarks: FaceLandmarks) -> np.ndarray:
    """FFHQ's oriented crop square for a face. Output: (4, 2) float64 corners (x, y):
    top-left, bottom-left, bottom-right, top-right of the aligned picture.

    The square's x axis runs along the eyes, tilted by the eye-to-mouth
    direction; its half-side is the larger of twice the eye distance and 1.8
    times the eye-to-mouth distance; its centre sits a tenth of the way from
    the eyes to the mouth.
    """
    eye_left, eye_right = np.array(landmarks.eye_left), np.array(landmarks.eye_right)
    mouth_left, mouth_right = np.array(landmarks.mouth_left), np.array(landmarks.mouth_right)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    length = np.hypot(*x)
    half_side = max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    if not (np.isfinite(length) and np.isfinite(half_side)) or length == 0 or half_side < 2:
        raise ImageError(
            "cannot align a face from landmarks this close together or invalid: "
            f"eyes {landmarks.eye_left}, {landmarks.eye_right}, "
            f"mouth {landmarks.mouth_left}, {landmarks.mouth_right}"
        )
    x = x / length * half_side
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def align_face(
    image: Image.Image,
    landmarks: FaceLandmarks,
    output_size: int,
    transform_size: int = 4096,
    enable_padding: bool = True,
) -> AlignedFace:
    """Cut the face out of ``image`` as FFHQ did, at ``output_size`` x ``output_size``.

    The square from :func:`face_quad` is sampled (bilinear) onto a
    ``transform_size`` canvas, then resized down to ``output_size`` (Lanczos),
    FFHQ's 4096 -> 1024 supersampling. First the photo is shrunk by a whole
    factor when the square is over 4x ``output_size``, and cropped to the
    square plus a border. Where the square leaves the photo, ``enable_padding``
    fills it with the photo's reflection, blurred and faded to its median
    colour towards the edge (FFHQ's look); otherwise that area is black.
    """
    if output_size < 1:
        raise ValueError(f"output_size must be a positive number of pixels, got {output_size}")
    if transform_size < output_size:
        raise ValueError(
            f"transform_size ({transform_size}) must be at least output_size ({output_size})"
        )
    quad = face_quad(landmarks)
    found = _as_quad(quad)
    img = image if image.mode == "RGB" else image.convert("RGB")
    qsize = np.hypot(*(quad[3] - quad[0]))

    # Shrink: resample from at most ~4x the output's pixels (the square is divided as FFHQ
    # does, without the half-pixel offset: a shift under half a shrunk pixel, kept)
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        size = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(size, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    # Crop to the square and a border (a tenth of its side)
    border = max(int(np.rint(qsize * 0.1)), 3)
    left, top, right, bottom = _bounds(quad)
    crop = (
        max(left - border, 0),
        max(top - border, 0),
        min(right + border, img.size[0]),
        min(bottom + border, img.size[1]),
    )
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise ImageError(
            f"the face's crop square {found} lies outside the {image.size[0]} x {image.size[1]} photo"
        )
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    # Pad where the square (and border) still leaves the picture
    left, top, right, bottom = _bounds(quad)
    pad = (
        max(-left + border, 0),
        max(-top + border, 0),
        max(right - img.size[0] + border, 0),
        max(bottom - img.size[1] + border, 0),
    )
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _pad_blurred(img, pad, blur=qsize * 0.02)
        quad += pad[:2]

    # PIL's QUAD maps the output's corners to the quad; its pixel centres are at +0.5
    img = img.transform(
        (transform_size, transform_size),
        Image.Transform.QUAD,
        (quad + 0.5).flatten().tolist(),
        Image.Resampling.BILINEAR,
    )
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return AlignedFace(image=img, quad=found, landmarks=landmarks)


def _bounds(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (
        int(np.floor(quad[:, 0].min())),
        int(np.floor(quad[:, 1].min())),
        int(np.ceil(quad[:, 0].max())),
        int(np.ceil(quad[:, 1].max())),
    )


def _as_quad(quad: np.ndarray) -> Quad:
    a, b, c, d = ((float(x), float(y)) for x, y in quad)
    return (a, b, c, d)


def _pad_blurred(img: Image.Image, pad: Sequence[int], blur: float) -> Image.Image:
    """FFHQ's padding: reflect the picture outwards by ``pad`` (left, top, right, bottom),
    then blend the reflection towards a blur of itself and, nearer the outer edge,
    towards the picture's median colour."""
    from scipy.ndimage import gaussian_filter

    left, top, right, bottom = (int(p) for p in pad)
    array = np.pad(
        np.asarray(img, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), "reflect"
    )
    h, w, _ = array.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    # 0 inside the photo, rising to 1 at the padded picture's outer edge
    mask = np.maximum(
        1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
        1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom),
    )
    array += (gaussian_filter(array, [blur, blur, 0]) - array) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    array += (np.median(array, axis=(0, 1)) - array) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(array), 0, 255)), "RGB")


def main_face(faces: Sequence[FaceLandmarks]) -> FaceLandmarks:
    """The photo's subject: the largest face, where faces of comparable size (box area
    at least :data:`COMPARABLE_AREA` of the largest) count as equally large and the
    detector's score decides among them.

    dlib's boxes come in the sizes of its image pyramid, so a face-like patch
    (a badge, a pattern) is often found at exactly the face's size; the score
    tells them apart, and a small background face never beats the subject.
    """
    if not faces:
        raise ValueError("no faces to choose from")
    largest = max(face.area for face in faces)
    comparable = [face for face in faces if face.area >= COMPARABLE_AREA * largest]
    return max(comparable, key=lambda face: (face.score, face.area))


def align_photo(
    image: Image.Image,
    output_size: int,
    detector: LandmarkDetector | None = None,
    *,
    name_for_errors: str,
    transform_size: int = 4096,
    enable_padding: bool = True,
) -> AlignedFace:
    """Detect the faces in a photo and align its main one (:func:`main_face`).

    ``detector``: None builds the built-in one (:func:`default_detector`; an
    :class:`ImageError` naming the ``align`` extra when it is not installed).
    Raises :class:`ImageError` naming the photo (``name_for_errors``, e.g.
    ``"photo me.jpg"``) when no face is found.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    detector = default_detector() if detector is None else detector
    faces = detector.detect(np.asarray(image))
    if not faces:
        raise ImageError(
            f"no face found in {name_for_errors}",
            hint="use a photo with a clear, frontal face, or invert without alignment "
            "(the photo is then resized and centre-cropped)",
        )
    return align_face(image, main_face(faces), output_size, transform_size, enable_padding)


def center_crop(image: Image.Image, output_size: int) -> Image.Image:
    """The photo's centred square, resized to ``output_size`` x ``output_size`` (Lanczos).

    The framing of generators that are not of aligned faces (landscapes,
    LSUN): the shorter side fills the picture and the longer one is cut
    evenly on both ends. The square is cut before resizing, so nothing from
    outside it bleeds in.
    """
    if output_size < 1:
        raise ValueError(f"output_size must be a positive number of pixels, got {output_size}")
    image = image if image.mode == "RGB" else image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((output_size, output_size), Image.Resampling.LANCZOS)
