"""Istio's Bookinfo rules, imported with `meshcli import istio`, route real requests between
real sidecars: a project of Bookinfo's shape (productpage, details, reviews v1/v2/v3, ratings;
the sample app stands in for each) is brought up once for every case here.

Calls are made from inside productpage's pod, as Bookinfo's productpage calls reviews, so
its sidecar applies the imported rules (the sample app forwards only x-* headers, so the
`end-user` header is set on the call to reviews itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MESHCLI = [sys.executable, "-m", "meshcli.cli.main"]
BOOKINFO = REPO.parent / "shared" / "corpora" / "istio" / "bookinfo"
if not BOOKINFO.is_dir():
    pytest.skip(f"the Istio corpus is not at {BOOKINFO}", allow_module_level=True)
WORKLOADS = {"productpage": "v1", "details-v1": "v1", "reviews-v1": "v1", "reviews-v2": "v2", "reviews-v3": "v3",
             "ratings-v1": "v1"}
# Run inside productpage: N calls to URL (with `end-user: USER` unless USER is empty); prints
# [[version, seconds], ...].
CALLS = """
import json, sys, time, urllib.request as u
url, count, user = sys.argv[1], int(sys.argv[2]), sys.argv[3]
answers = []
for _ in range(count):
    started = time.monotonic()
    request = u.Request(url, headers={"end-user": user} if user else {})
    body = json.loads(u.urlopen(request, timeout=30).read())
    answers.append([body["version"], round(time.monotonic() - started, 2)])
print(json.dumps(answers))
"""


class Bookinfo:
    def __init__(self, directory: Path, project: str) -> None:
        self.directory, self.project = directory, project

    def cli(self, *args: str) -> dict:
        result = subprocess.run([*MESHCLI, *args, "-p", self.project, "--json"], cwd=self.directory,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"meshcli {' '.join(args)}: {result.stdout}\n{result.stderr}"
        return json.loads(result.stdout)

    def calls(self, service: str, count: int, user: str = "") -> list[tuple[str, float]]:
        result = subprocess.run(["docker", "exec", f"{self.project}-productpage-1", "python3", "-c", CALLS,
                                 f"http://{service}:8080/", str(count), user],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return [tuple(answer) for answer in json.loads(result.stdout)]


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bookinfo")
    services = {name: {"image": "meshcli-sample-app:dev",
                       "build": {"context": str(REPO / "sample-apps"),
                                 "args": {"BASE_IMAGE": os.environ.get("MESHCLI_BASE_IMAGE", "python:3.11-slim")}},
                       "stop_grace_period": "2s", "expose": ["8080"],
                       "environment": {"SERVICE_NAME": name.split("-v")[0], "SERVICE_VERSION": version}}
                for name, version in WORKLOADS.items()}
    (directory / "compose.yaml").write_text(yaml.safe_dump({"services": services}, sort_keys=False))
    instance = Bookinfo(directory, f"meshistio-{uuid.uuid4().hex[:8]}")
    try:
        instance.cli("up", "--timeout", "240")
        yield instance
    finally:
        down = subprocess.run([*MESHCLI, "down", "-v", "-p", instance.project], cwd=directory, capture_output=True)
        if down.returncode != 0:
            subprocess.run(["docker", "compose", "-p", instance.project, "down", "-v", "--remove-orphans", "-t", "1"],
                           capture_output=True)


def test_jason_reaches_reviews_v2_and_everyone_else_v3(bookinfo):
    imported = bookinfo.cli("import", "istio", str(BOOKINFO / "virtual-service-reviews-jason-v2-v3.yaml"))
    assert imported["changed"] and imported["sidecars"]["synced"] == imported["sidecars"]["workloads"] == 6
    assert [r["kind"] for r in imported["resources"] if r["imported"]] == ["VirtualService"]
    assert {v for v, _ in bookinfo.calls("reviews", 10, "jason")} == {"v2"}
    assert {v for v, _ in bookinfo.calls("reviews", 10)} == {"v3"}
    assert {v for v, _ in bookinfo.calls("reviews", 5, "ann")} == {"v3"}


def test_the_ratings_delay_file_delays_jason_by_seven_seconds(bookinfo):
    imported = bookinfo.cli("import", "istio", str(BOOKINFO / "virtual-service-ratings-test-delay.yaml"), "--merge")
    assert imported["sidecars"]["synced"] == 6
    mesh = yaml.safe_load((bookinfo.directory / "mesh.yaml").read_text())
    assert mesh["services"]["ratings"]["routes"][0]["fault"] == {"delay": {"fixed": "7s", "percent": 100}}
    assert "reviews" in mesh["services"]  # the earlier import is still there
    [(version, seconds)] = bookinfo.calls("ratings", 1, "jason")
    assert version == "v1" and 7 <= seconds < 9
    others = bookinfo.calls("ratings", 3)
    assert all(v == "v1" and s < 2 for v, s in others), others
    # The first file's rules still route.
    assert {v for v, _ in bookinfo.calls("reviews", 3, "jason")} == {"v2"}
