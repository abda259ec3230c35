from __future__ import annotations

import pytest

from tests.training.helpers import tiny_clip_file, write_class_folders


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """4 classes x 8 one-second clips, as class folders."""
    return write_class_folders(tmp_path_factory.mktemp("dataset"))


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory):
    """The tiny random CLIP of the encoder tests, as a state-dict file."""
    return tiny_clip_file(tmp_path_factory.mktemp("clip") / "tiny_clip.pt")


@pytest.fixture(scope="session")
def store(dataset, tmp_path_factory):
    """The dataset curated once (shards of 10 clips)."""
    from soundguide.training.curation import curate

    out = tmp_path_factory.mktemp("store") / "store"
    curate(dataset, out, shard_size=10, progress=False)
    return out


@pytest.fixture(scope="session")
def text_encoder():
    from soundguide.encoders.clip import CLIPEncoder
    from tests.factories import tiny_clip

    return CLIPEncoder(tiny_clip())
