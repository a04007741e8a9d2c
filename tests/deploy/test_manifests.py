"""The image recipe and the Kubernetes manifests: valid for a pinned Kubernetes, and saying
what the service needs (probes on the right routes, a drain shorter than the grace period,
one scheduler, a GPU only in the gpu overlay, no root)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from functools import cache
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.cli.main import main as abx
from service.settings import PROJECT_ROOT
from tests.suite.system_tools import requires_system_tool, system_tool_path

KUBERNETES_VERSION = "1.31.0"  # the oldest release the manifests support (docs/kubernetes.md)
KUSTOMIZE = PROJECT_ROOT / "deploy" / "kubernetes"
OVERLAYS = ["cpu", "gpu"]
GRACEFUL_TIMEOUT_SECONDS = 10  # service/server.py: gunicorn's graceful_timeout

needs_kubectl = requires_system_tool("kubectl")


@cache
def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = system_tool_path("kubectl")
    assert kubectl is not None
    out = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(overlay: str, kind: str, name: str) -> dict[str, Any]:
    (match,) = [d for d in render(overlay) if d["kind"] == kind and d["metadata"]["name"] == name]
    return match


def pod_specs(overlay: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]
        for d in render(overlay)
        if d["kind"] in {"Deployment", "StatefulSet", "Job"}
    }


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_pinned_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Job", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy"} <= kinds  # fmt: skip
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_the_validation_catches_a_broken_object() -> None:
    broken = find("cpu", "StatefulSet", "abx-api")
    broken = {**broken, "spec": {**broken["spec"], "replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_the_api_is_probed_on_its_routes_and_drains_within_its_grace_period() -> None:
    pod = find("cpu", "StatefulSet", "abx-api")["spec"]["template"]
    (api,) = pod["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    sleep = api["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert pod["spec"]["terminationGracePeriodSeconds"] > int(sleep[1]) + GRACEFUL_TIMEOUT_SECONDS
    assert [c["args"] for c in pod["spec"]["initContainers"]] == [["migrate"]]
    mounts = {m["name"]: m["mountPath"] for m in api["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in find("cpu", "StatefulSet", "abx-api")["spec"]["volumeClaimTemplates"]]  # fmt: skip
    assert claims == ["data"] and mounts["data"] == "/var/lib/abx/data"  # the spool survives
    hpa = find("cpu", "HorizontalPodAutoscaler", "abx-api")
    pdb = find("cpu", "PodDisruptionBudget", "abx-api")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"]


@needs_kubectl
def test_one_scheduler_and_workers_without_beat() -> None:
    scheduler = find("cpu", "Deployment", "abx-scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"
    assert "--beat" in scheduler["spec"]["template"]["spec"]["containers"][0]["args"]
    worker = find("cpu", "Deployment", "abx-worker")
    assert "--beat" not in worker["spec"]["template"]["spec"]["containers"][0]["args"]


@needs_kubectl
def test_only_the_gpu_overlay_asks_for_a_gpu_and_the_cuda_image() -> None:
    for overlay, wants_gpu in (("cpu", False), ("gpu", True)):
        for name, pod in pod_specs(overlay).items():
            for container in pod["spec"]["containers"]:
                resources = container.get("resources", {})
                asks = "nvidia.com/gpu" in resources.get("limits", {})
                assert asks == (wants_gpu and name == "abx-api"), (overlay, name)
                tag = container["image"].rsplit(":", 1)[1]
                assert tag == ("cuda" if wants_gpu else "cpu")
    api = find("gpu", "StatefulSet", "abx-api")["spec"]["template"]["spec"]
    assert api["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert api["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"  # kept


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_an_abx_command_run_as_non_root(overlay: str) -> None:
    policy = find(overlay, "NetworkPolicy", "abx")["spec"]["podSelector"]["matchLabels"]
    for name, pod in pod_specs(overlay).items():
        assert policy.items() <= pod["metadata"]["labels"].items(), name
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["readOnlyRootFilesystem"] is True
            command, *options = container["args"]
            params = abx.commands[command].params  # type: ignore[attr-defined]
            known = {opt for p in params for opt in [*p.opts, *p.secondary_opts]}
            assert {o for o in options if o.startswith("--")} <= known, (name, options)


def test_the_image_runs_as_a_user_with_a_healthcheck_for_both_flavours() -> None:
    recipe = (PROJECT_ROOT / "deploy" / "Containerfile").read_text()
    final_stage = recipe.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER abx$", final_stage, re.M)
    assert "HEALTHCHECK" in final_stage and "/healthz" in final_stage
    assert '".[${FLAVOR}]"' in recipe
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert {"cpu", "gpu"} <= extras.keys()
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", recipe, re.M) for p in line.split()}
    assert exposed == {8000, 9464, 9465}
