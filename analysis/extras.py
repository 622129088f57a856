"""Optional dependencies: the extra of the distribution that brings each, and one clear error when one is missing.

The core install (`pip install trainability-lab`) holds what the monitor, the models and
training need. Notebooks and reports, some datasets, Dask sweeps, the trainer
integrations and the benchmark against peer tools (`bench`, not part of `all`) each
need an extra; `require` imports a module of an extra or raises `MissingExtra`, whose
message is the command that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

DISTRIBUTION = "trainability-lab"

EXTRAS: dict[str, dict[str, str]] = {
    "report": {"jupyter": "jupyter", "ipykernel": "ipykernel", "nbconvert": "nbconvert",
               "nbformat": "nbformat", "papermill": "papermill", "matplotlib": "matplotlib",
               "seaborn": "seaborn", "bleach": "bleach"},
    "data": {"sklearn": "scikit-learn", "mlxtend": "mlxtend"},
    "cluster": {"dask": "dask", "distributed": "distributed"},
    "integrations": {"pytorch_lightning": "pytorch-lightning", "transformers": "transformers",
                     "accelerate": "accelerate", "tensorboard": "tensorboard"},
    "bench": {"fastai": "fastai", "torchlens": "torchlens", "wandb": "wandb", "tensorboard": "tensorboard",
              "cockpit": "cockpit-for-pytorch", "backpack": "backpack-for-pytorch"},
}
"""extra -> {import name: distribution} for every optional dependency."""


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def install_command(extra: str) -> str:
    """The pip command that installs `extra`."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {', '.join(EXTRAS)}; got {extra!r}")
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def optional(module: str) -> ModuleType | None:
    """Import `module`, or None when it (or a parent package) is not installed.

    An import error inside an installed package propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and (module == error.name or module.startswith(error.name + ".")):
            return None
        raise


def require(module: str, extra: str, *, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtra saying which extra installs it.

    `feature` names what needs it in the message (default: the module).
    """
    command = install_command(extra)
    loaded = optional(module)
    if loaded is None:
        raise MissingExtra(f"{feature or module} needs the {extra!r} extra, which is not installed: {command}",
                           name=module)
    return loaded


def require_extra(extra: str, *, feature: str) -> None:
    """Raise MissingExtra unless every module of `extra` is installed (found, not imported)."""
    command = install_command(extra)
    missing = [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(f"{feature} needs the {extra!r} extra ({', '.join(missing)} missing): {command}",
                           name=missing[0])
