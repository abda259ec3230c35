"""A stand-in for NVIDIA's ``torch_utils.persistence`` and ``dnnlib.util``, pickling as theirs do.

One copy for every test that writes an NVIDIA network pickle (the reader's
tests and the StyleGAN2-ADA / StyleGAN3 references). ``persistent(source)``
is ``persistence.persistent_class``: the object keeps its init arguments and
pickles as ``_reconstruct_persistent_obj(meta)`` with ``meta`` holding
``source``, the class name and the state. A plain ``pickle.load`` of such a
file calls that function, which executes the source, as NVIDIA's does;
soundguide's reader must never. The modules are importable only inside
:func:`nvidia_modules`. Not a test module.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator

from torch import nn


def _reconstruct_persistent_obj(meta):  # what a plain pickle.load calls
    namespace: dict = {}
    exec(meta["module_src"], namespace)  # noqa: S102 - the behaviour the reader must avoid
    return types.SimpleNamespace(**meta["state"])


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
_reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
PERSISTENCE = types.ModuleType("torch_utils.persistence")
PERSISTENCE._reconstruct_persistent_obj = _reconstruct_persistent_obj
TORCH_UTILS = types.ModuleType("torch_utils")
TORCH_UTILS.persistence = PERSISTENCE


class EasyDict(dict):
    """Pickles as ``dnnlib.util.EasyDict``."""


EasyDict.__module__ = "dnnlib.util"
DNNLIB_UTIL = types.ModuleType("dnnlib.util")
DNNLIB_UTIL.EasyDict = EasyDict


@contextlib.contextmanager
def nvidia_modules() -> Iterator[None]:
    """``torch_utils.persistence`` and ``dnnlib.util`` importable, only inside the block."""
    dnnlib = types.ModuleType("dnnlib")
    dnnlib.util = DNNLIB_UTIL
    added = {
        "torch_utils": TORCH_UTILS,
        "torch_utils.persistence": PERSISTENCE,
        "dnnlib": dnnlib,
        "dnnlib.util": DNNLIB_UTIL,
    }
    assert not set(added) & set(sys.modules)
    sys.modules.update(added)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def persistent(source: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Like ``persistence.persistent_class``, with ``source`` as the pickled module source."""

    def decorate(orig: type[nn.Module]) -> type[nn.Module]:
        class Decorator(orig):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._init_args = args
                self._init_kwargs = kwargs

            def __reduce__(self):
                fields = list(super().__reduce__())
                fields += [None] * max(3 - len(fields), 0)
                meta = dict(
                    type="class",
                    version=6,
                    module_src=source,
                    class_name=orig.__name__,
                    state=fields[2],
                )
                return (_reconstruct_persistent_obj, (meta,), None, *fields[3:])

        Decorator.__name__ = Decorator.__qualname__ = orig.__name__
        return Decorator

    return decorate
