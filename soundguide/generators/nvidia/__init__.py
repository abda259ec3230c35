"""NVIDIA's generators (StyleGAN2-ADA, StyleGAN3) in pure PyTorch, built from their pickles.

Each architecture is one module, readable on its own as the specification
(``stylegan2_ada.py``, ``stylegan3.py``); the pickles are read without running their code by
:mod:`soundguide.core.nvidia_pickle`.
"""
