"""Module names of the flat layout (before subpackages), kept importable for pickles that name them.

Models logged before the move pickle their classes by module path (``powerpipe.features.FeatureBuilder``,
``powerpipe.serving.FeatureModel``): loading one imports that path. Each old name resolves to the
module that now holds the code, so those models still load and serve. Only names that are not packages
of their own now (``powerpipe.tracking`` is) are mapped.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "powerpipe.paths": "powerpipe.core.paths",
    "powerpipe.tags": "powerpipe.core.tags",
    "powerpipe.exceptions": "powerpipe.core.exceptions",
    "powerpipe.fsutil": "powerpipe.core.fsutil",
    "powerpipe.data": "powerpipe.forecast.data",
    "powerpipe.opsd": "powerpipe.forecast.opsd",
    "powerpipe.features": "powerpipe.forecast.features",
    "powerpipe.evaluation": "powerpipe.forecast.evaluation",
    "powerpipe.modeling": "powerpipe.forecast.modeling",
    "powerpipe.serving": "powerpipe.forecast.serving",
    "powerpipe.figures": "powerpipe.forecast.figures",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old module name with the module that holds its code now (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a placeholder; exec_module replaces it in sys.modules

    def exec_module(self, module):
        # The import system takes whatever sys.modules holds after exec_module: the real module.
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
