"""``soundguide video``: sound over time (see :mod:`soundguide.video.run`)."""
