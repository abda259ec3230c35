"""Neural encoders and their input pipelines, with no plugin knowledge.

- :mod:`soundguide.encoders.audio`: robust audio loading and waveform checks.
- :mod:`soundguide.encoders.soundclip`: the SoundCLIP mel front end and ResNet18 audio encoder.
- :mod:`soundguide.encoders.clip`: CLIP loading, text/image encoding, differentiable preprocessing.
- :mod:`soundguide.encoders.irse`: the IR-SE50 blocks, shared by
  :mod:`soundguide.encoders.arcface` (the identity term) and :mod:`soundguide.encoders.e4e`
  (the e4e inversion encoder).

Import the submodule you need; this package imports nothing heavy.
"""
