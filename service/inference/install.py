"""Which onnxruntime package serves the models, and whether the install can use CUDA.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same ``onnxruntime`` module, so with
both present the files of the one installed last win and the CUDA provider may be missing
(microsoft/onnxruntime#26996): abx has them as alternative extras, ``abx[cpu]`` and
``abx[gpu]``, and ``scripts/bootstrap`` installs exactly one. An environment that has both
anyway still serves, on the CPU, and says how to mend it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version

from service.inference.providers import CUDA

RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu")


def installed_runtime_packages() -> dict[str, str]:
    """Installed onnxruntime distributions, by name, with their versions."""
    found = {}
    for name in RUNTIME_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def install_problem(packages: Mapping[str, str], available_providers: Sequence[str]) -> str | None:
    """Why this install cannot use a GPU it was meant for; None when nothing is wrong."""
    if "onnxruntime-gpu" not in packages or CUDA in available_providers:
        return None
    if "onnxruntime" in packages:
        return (
            "onnxruntime and onnxruntime-gpu are both installed, and the onnxruntime module "
            "offers no CUDA provider: models run on the CPU. Remove both and install one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'abx[gpu]'"
        )
    return (
        "onnxruntime-gpu is installed but offers no CUDA provider: models run on the CPU. "
        "Reinstall it: pip install --force-reinstall onnxruntime-gpu"
    )
