"""The import-order rules of pyrender on OSMesa, in one place. Every user of pyrender imports it
through :func:`import_pyrender`.

1. PyOpenGL picks its platform when OpenGL is first imported, so ``PYOPENGL_PLATFORM`` must be set
   before that: importing this module sets it to ``osmesa`` (headless, CPU llvmpipe) unless the
   environment already says otherwise. Modules that may lead to pyrender import this one at the top.
2. torch's compiler stack (``torch._dynamo``, which loads triton's LLVM) must be loaded before OSMesa
   loads Mesa's LLVM: in the other order the first ``torch.optim`` step after an OSMesa context exists
   segfaults (two LLVMs in one process; torch loads triton lazily, e.g. on an optimizer's first step).
   :func:`import_pyrender` loads it first. It is not done at import time: it costs seconds, and
   most processes that import the data modules never render with pyrender.
"""

from __future__ import annotations

import os
from types import ModuleType

__all__ = ["preload_compiler", "import_pyrender"]

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")


def preload_compiler() -> None:
    """Load torch's compiler stack now (rule 2); a no-op when torch has none."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # torch built without the compiler: nothing to pre-load
        pass


def import_pyrender() -> ModuleType:
    """``pyrender``, imported after :func:`preload_compiler` and with the OSMesa platform (rule 1)."""
    preload_compiler()
    import pyrender

    return pyrender
