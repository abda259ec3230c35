"""Neural encoders and their input pipelines, with no plugin knowledge.

- :mod:`soundguide.encoders.audio`: robust audio loading and waveform checks.
- :mod:`soundguide.encoders.soundclip`: the SoundCLIP mel front end and ResNet18 audio encoder.
- :mod:`soundguide.encoders.clip`: CLIP loading, text/image encoding, differentiable preprocessing.

Import the submodule you need; this package imports nothing heavy.
"""
