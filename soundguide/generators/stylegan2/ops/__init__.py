"""The generator's fast ops, kept apart from the architecture (model.py) as rosinality keeps ``op/``.

- :mod:`.upfirdn2d`: FIR up-sampling and blur; :func:`upfirdn2d` is the
  reference, :func:`blur`, :func:`blur_backward` and :func:`upsample` the
  cached depthwise routes of the two cases the generator uses.
- :mod:`.winograd`: 3x3 convolutions by Winograd F(4x4, 3x3) and their
  adjoint (reference: ``F.conv2d``).
- :mod:`.modulated`: the fast routes of the modulated convolution, the styled
  convolution (its frozen-weight autograd Function) and ToRGB, each against
  the textbook forward in model.py.
- :mod:`.cache`: tensors derived from parameters, kept while those stay.
- :mod:`.layout`: channels-last and batch-folding helpers.

Every op is made of torch operators (no compiled extension); they are
written here because torch has no modulated convolution and no upfirdn2d.
"""

from __future__ import annotations
