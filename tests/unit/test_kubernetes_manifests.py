"""deploy/kubernetes: valid against the Kubernetes schemas, and timed and locked down as it says.

The schemas are the ones kubernetes-validate ships (no cluster, no network). Beyond the schemas:
the termination grace outlasts the preStop delay and the drain, the probes ask the gRPC health
service, the pod runs as the Dockerfile's non-root user on a read-only root filesystem with a
volume wherever the gateway writes, and every flag is one ``turnout serve`` takes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "deploy" / "kubernetes"
# The newest Kubernetes whose schemas kubernetes-validate ships; the gRPC probes' TLS mode needs it.
KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()
INFERENCE_PORT, METRICS_PORT, CONTROL_PORT = 8001, 8002, 8003


def documents() -> list[dict[str, Any]]:
    found = [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert found, f"no manifests in {MANIFESTS}"
    return found


def one(kind: str) -> dict[str, Any]:
    matching = [doc for doc in documents() if doc["kind"] == kind]
    assert len(matching) == 1, f"expected one {kind}, found {len(matching)}"
    return matching[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (only,) = pod_spec()["containers"]
    return dict(only)


def flag(name: str) -> str:
    """The value of ``--name=value`` in the container's arguments."""
    values = [arg.split("=", 1)[1] for arg in container()["args"] if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times"
    return values[0]


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (REPO_ROOT / "Dockerfile").read_text())
    assert match, f"the Dockerfile sets no {name}"
    return match[1]


@pytest.mark.parametrize("document", documents(), ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schema(document: dict[str, Any]) -> None:
    # strict: a misspelt field is an error, not something the API server silently drops.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_deployment_has_a_service_a_disruption_budget_and_a_secret() -> None:
    assert {doc["kind"] for doc in documents()} == {"Deployment", "Service", "PodDisruptionBudget", "Secret"}


def test_termination_grace_outlasts_the_prestop_delay_and_the_drain() -> None:
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s, drain_s = float(command[1]), float(flag("grace-period-s"))
    assert pre_stop_s > 0, "without a delay, calls still routed to the pod meet a closed port"
    assert pod_spec()["terminationGracePeriodSeconds"] > pre_stop_s + drain_s


def test_probes_ask_the_grpc_health_service_on_the_inference_port() -> None:
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = container()[probe]["grpc"]
        assert grpc_probe["port"] == INFERENCE_PORT, probe
        # The inference port serves TLS in this deployment: a plaintext probe would never pass.
        assert grpc_probe["mode"] == "TLS", probe
    assert container()["readinessProbe"]["grpc"]["service"] == "inference.GRPCInferenceService"


def test_the_pod_runs_as_the_dockerfiles_non_root_user_on_a_read_only_root() -> None:
    match = re.search(r"^USER (\d+):(\d+)$", (REPO_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile's USER must be numeric (uid:gid) for runAsNonRoot to be checked"
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (int(match[1]), int(match[2])) != (0, 0)
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]


def test_every_path_the_gateway_writes_is_a_writable_volume() -> None:
    mounts = {mount["mountPath"]: mount for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    # The state directory comes from the image's environment; capture from the arguments; /tmp holds
    # the supervisor's sockets and the telemetry directory with --processes N.
    for path in (dockerfile_env("TURNOUT_STATE_DIR"), flag("capture-dir"), "/tmp"):
        assert path in mounts, f"{path} is on the read-only root filesystem"
        assert not mounts[path].get("readOnly", False)
        assert "emptyDir" in volumes[mounts[path]["name"]]


def test_the_secrets_files_are_the_ones_the_flags_name() -> None:
    (mount,) = [mount for mount in container()["volumeMounts"] if mount["name"] == "secrets"]
    secret_name = next(v for v in pod_spec()["volumes"] if v["name"] == "secrets")["secret"]["secretName"]
    secret = one("Secret")
    assert secret["metadata"]["name"] == secret_name
    for name in ("control-tokens-file", "tls-cert-file", "tls-key-file"):
        path = Path(flag(name))
        assert path.parent == Path(mount["mountPath"]), name
        assert path.name in secret["stringData"], name
    # Reachable from other pods, so it must demand credentials (the gateway refuses to start otherwise).
    assert flag("control-address") == f"0.0.0.0:{CONTROL_PORT}"


def test_the_service_exposes_inference_control_and_metrics_on_separate_ports() -> None:
    service = one("Service")
    container_ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    exposed = {port["port"]: container_ports[port["targetPort"]] for port in service["spec"]["ports"]}
    assert exposed == {INFERENCE_PORT: INFERENCE_PORT, CONTROL_PORT: CONTROL_PORT, METRICS_PORT: METRICS_PORT}
    assert service["spec"]["selector"].items() <= one("Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_prometheus_scrapes_the_metrics_port() -> None:
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == int(flag("metrics-port")) == METRICS_PORT


def test_the_disruption_budget_covers_the_pods_and_keeps_one_serving() -> None:
    budget, deployment = one("PodDisruptionBudget"), one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_resources_are_requested_and_limited() -> None:
    resources = container()["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert {"cpu", "memory"} <= resources["limits"].keys()


def test_every_argument_is_a_turnout_serve_flag() -> None:
    # argparse exits on a flag it does not know; a typo here would crash-loop every pod.
    parsed = build_parser().parse_args(["serve", *container()["args"]])
    assert parsed.command == "serve"


def test_the_replicas_share_one_routing_state_named_by_the_secret() -> None:
    deployment = one("Deployment")
    assert deployment["spec"]["replicas"] >= 3, "a fleet: one rollback reaches every replica"
    [url] = [e for e in container()["env"] if e["name"] == "TURNOUT_STATE_URL"]
    reference = url["valueFrom"]["secretKeyRef"]
    secret = one("Secret")
    assert reference["name"] == secret["metadata"]["name"]
    assert secret["stringData"][reference["key"]].startswith("postgresql://")
    assert "value" not in url, "the URL holds a password: from the secret only"
