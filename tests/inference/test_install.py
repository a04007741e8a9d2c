"""One onnxruntime package, never both: the extras, the install and the problem it reports."""

from __future__ import annotations

import tomllib

import onnxruntime as ort
import pytest

from service.inference.install import (
    RUNTIME_PACKAGES,
    install_problem,
    installed_runtime_packages,
)
from service.settings import PROJECT_ROOT

CPU_ONLY = ["CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _name(requirement: str) -> str:
    return requirement.split(">")[0].split("=")[0].split("[")[0].strip()


def test_the_runtime_is_an_extra_and_the_two_extras_never_meet() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert not {_name(r) for r in project["dependencies"]} & set(RUNTIME_PACKAGES)
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert extras["cpu"] & set(RUNTIME_PACKAGES) == {"onnxruntime"}
    assert extras["gpu"] & set(RUNTIME_PACKAGES) == {"onnxruntime-gpu"}
    # `abx[test,gpu]` must not bring the CPU package back in.
    others = set().union(*(v for k, v in extras.items() if k not in ("cpu", "gpu")))
    assert not others & set(RUNTIME_PACKAGES)


def test_this_environment_has_exactly_one_runtime_package() -> None:
    installed = installed_runtime_packages()
    assert len(installed) == 1, installed  # scripts/bootstrap installs one
    assert install_problem(installed, ort.get_available_providers()) is None


@pytest.mark.parametrize(
    ("packages", "providers"),
    [
        ({"onnxruntime": "1.20.0"}, CPU_ONLY),
        ({"onnxruntime-gpu": "1.20.0"}, WITH_CUDA),
        # Both, but the module kept its CUDA provider (e.g. the GPU build first on the path).
        ({"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}, WITH_CUDA),
    ],
)
def test_a_working_install_has_no_problem(packages: dict[str, str], providers: list[str]) -> None:
    assert install_problem(packages, providers) is None


def test_both_packages_without_cuda_say_how_to_mend_it() -> None:
    problem = install_problem({"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.0"}, CPU_ONLY)
    assert problem is not None
    assert "both installed" in problem and "pip uninstall -y onnxruntime onnxruntime-gpu" in problem


def test_a_gpu_package_without_cuda_is_named() -> None:
    problem = install_problem({"onnxruntime-gpu": "1.20.0"}, CPU_ONLY)
    assert problem is not None and "--force-reinstall onnxruntime-gpu" in problem
