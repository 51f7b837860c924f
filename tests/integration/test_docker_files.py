"""docker/ compose files parse and expose the ports and URLs the docs document (docs/cluster.md)."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = (ROOT / "docs" / "cluster.md").read_text()

EXPECTED = {
    "redis.yml": {"ports": {6379}, "url": "redis://localhost:6379/0"},
    "cluster.yml": {
        "ports": {7000, 7001, 7002},
        "url": "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
    },
    "sentinel.yml": {
        "ports": {6380, 6381, 26379},
        "url": "redis+sentinel://127.0.0.1:26379/fleche/0",
    },
}


def ports_of(compose: dict) -> set[int]:
    found = set()
    for service in compose["services"].values():
        for mapping in service.get("ports", []):
            found.add(int(str(mapping).split(":")[0]))
        command = service.get("command", [])
        text = " ".join(command) if isinstance(command, list) else command
        found |= {int(p) for p in re.findall(r"--port\s+(\d+)", text)}
        found |= {int(p) for p in re.findall(r"(?m)port (\d+)", text)}
    return found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_compose_file_parses_and_matches_the_docs(name):
    compose = yaml.safe_load((ROOT / "docker" / name).read_text())
    assert compose["services"]
    for service in compose["services"].values():
        assert service["image"].startswith("redis:")
    assert ports_of(compose) >= EXPECTED[name]["ports"]
    assert f"docker/{name}" in DOCUMENTED
    assert EXPECTED[name]["url"] in DOCUMENTED
    for port in EXPECTED[name]["ports"]:
        assert str(port) in DOCUMENTED


def test_every_compose_file_is_covered():
    assert {p.name for p in (ROOT / "docker").glob("*.yml")} == set(EXPECTED)
