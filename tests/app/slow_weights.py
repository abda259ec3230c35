"""A ``-p`` plugin for the browser tests: known weights at ``$SOUNDGUIDE_TEST_WEIGHTS_URL``
(a local server that sends them slowly), so the page's download progress can be seen."""

from __future__ import annotations

import os

import soundguide
from soundguide import KnownWeights


@soundguide.hookimpl
def register_weights(registry):
    url = os.environ.get("SOUNDGUIDE_TEST_WEIGHTS_URL")
    if url:
        registry.add(KnownWeights("slow-weights", url, "slow.bin", "MIT", "sent slowly"))
