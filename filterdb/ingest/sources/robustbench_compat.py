"""The one place robustbench is imported, with its two install quirks fixed first.

robustbench 1.1.1 from PyPI does not import on a fresh install (PLATFORM.md "robustbench
1.1.1"): it imports ``autoattack`` and ``autoattack.state``, which its own dependency
installs as ``pyautoattack``; and ``pkg_resources``, which setuptools >= 81 dropped.
:func:`import_robustbench` aliases the first and shims the second, so nothing else in
filterdb imports robustbench and filterdb works without it.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import sys
import types
import warnings
from functools import cache

from filterdb.errors import SourceError

# robustbench imports `autoattack` and `autoattack.state` (robustbench/eval.py); the other
# submodules are aliased too so that a later `import autoattack.X` gets the same objects.
AUTOATTACK_SUBMODULES = (
    "state",
    "autoattack",
    "autopgd_base",
    "checks",
    "fab_base",
    "fab_projections",
    "fab_pt",
    "other_utils",
    "square",
)

INSTALL_HINT = "install it with `pip install robustbench==1.1.1`"


@cache
def import_robustbench() -> types.ModuleType:
    """Import robustbench after fixing its install quirks; return the package.

    Imports ``robustbench.utils`` and ``robustbench.model_zoo`` too, so callers can use
    them as attributes. Raises :class:`~filterdb.errors.SourceError` (one line) when
    robustbench is absent or still fails to import.
    """
    if importlib.util.find_spec("robustbench") is None:
        raise SourceError(f"robustbench is not installed; {INSTALL_HINT}")
    _alias_autoattack()
    _shim_pkg_resources()
    try:
        with warnings.catch_warnings():
            # robustbench 1.1.1 imports timm's deprecated module paths, and timm warns about
            # torch.jit at import (PLATFORM.md): nothing a filterdb user can act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            robustbench = importlib.import_module("robustbench")
            importlib.import_module("robustbench.utils")
            importlib.import_module("robustbench.model_zoo")
    except Exception as error:  # any import failure means the same thing to the user
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise SourceError(
            f"robustbench fails to import ({type(error).__name__}: {first_line}); {INSTALL_HINT}"
        ) from error
    return robustbench


def _alias_autoattack() -> None:
    """Make ``autoattack`` and ``autoattack.<sub>`` name the installed ``pyautoattack``."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return  # a real autoattack is installed: leave it alone
    try:
        package = importlib.import_module("pyautoattack")
    except ImportError as error:
        raise SourceError(
            f"robustbench needs autoattack, and pyautoattack is missing ({error}); {INSTALL_HINT}"
        ) from error
    sys.modules["autoattack"] = package
    for name in AUTOATTACK_SUBMODULES:
        try:
            module = importlib.import_module(f"pyautoattack.{name}")
        except ImportError:
            continue  # e.g. fab_tf needs TensorFlow; robustbench never imports those
        sys.modules[f"autoattack.{name}"] = module


def _shim_pkg_resources() -> None:
    """Provide ``pkg_resources.resource_filename`` when setuptools no longer ships it."""
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    shim = types.ModuleType("pkg_resources")
    shim.__doc__ = "filterdb's stand-in: only resource_filename, which robustbench uses."
    shim.resource_filename = _resource_filename
    sys.modules["pkg_resources"] = shim


def _resource_filename(module_name: str, resource: str) -> str:
    """Path of ``resource`` beside module ``module_name``, as pkg_resources returned it."""
    spec = importlib.util.find_spec(module_name)
    # pkg_resources resolves a plain module against its package's directory; importlib
    # only accepts packages (Python 3.11), so step up to the parent package.
    if spec is not None and spec.submodule_search_locations is None:
        module_name = module_name.rpartition(".")[0]
    return str(importlib.resources.files(module_name).joinpath(resource))
