"""``soundguide batch``: many edits from one config and a manifest, on one process or
many (torchrun), resumable, with one index."""
