"""The sidecar config's one definition (meshproxy.config): importable by the control plane as it
is, and the single source of what crosses the process boundary, shell scripts included."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from meshproxy import config as wire

PROXY = Path(__file__).resolve().parents[2] / "proxy"


def test_the_contract_imports_only_the_standard_library():
    # meshcli imports it on the host, where the sidecar's dependencies need not be (and
    # meshproxy/__init__.py must stay import-free for that). A fresh interpreter tells.
    probe = ("import json, sys; before = set(sys.modules); import meshproxy.config; "
             "print(json.dumps(sorted(set(sys.modules) - before)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                       text=True).stdout)
    outside = [name for name in loaded
               if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "meshproxy"]
    assert "meshproxy.config" in loaded
    assert outside == []
    assert [name for name in loaded if name.startswith("meshproxy")] == ["meshproxy", "meshproxy.config"]


def test_the_pod_script_and_the_image_use_the_contracts_ports():
    pod = (PROXY / "pod.sh").read_text()
    exposed = re.search(r"^EXPOSE (.*)$", (PROXY / "Dockerfile").read_text(), re.M).group(1).split()
    assert sorted(int(port) for port in exposed) == sorted(
        [wire.ADMIN_PORT, wire.OUTBOUND_PORT, wire.INBOUND_PORT, wire.HEALTH_PORT, wire.METRICS_PORT])
    # pod.sh (shell) asks the contract for the values of its iptables rules
    program = re.search(r"python -c '(.*?)'", pod, re.S).group(1)
    assigned = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True, text=True).stdout
    assert assigned.split() == [f"INBOUND_PORT={wire.INBOUND_PORT}", f"OUTBOUND_PORT={wire.OUTBOUND_PORT}",
                                f"SIDECAR_UID={wire.SIDECAR_UID}",
                                f"READY_URL=http://127.0.0.1:{wire.HEALTH_PORT}{wire.HEALTH_PATH}"]
    assert not re.search(r"\b150\d\d\b|\b1337\b|/run/", pod.replace("15000:15099", ""))


def test_faults_file_round_trip():
    faults = (wire.RuntimeFault("f-1", "payment", http=wire.HttpFault(wire.Delay(0.25)), created=1.5),
              wire.RuntimeFault("f-2", "orders", "frontend", tcp=wire.TcpFault("limit-data", bytes=10), until=9.0))
    text = wire.dump_faults(faults)
    assert wire.parse_faults(text) == faults
    assert [f["http"] for f in json.loads(text)["faults"]] == [{"delay": {"ms": 250, "percent": 100.0}}, None]


def test_durations_come_back_as_the_milliseconds_they_were():
    for ms in (0, 1, 1.5, 25, 300, 1000, 1500, 60_000, 0.001, 123.456):
        assert wire.milliseconds(wire.seconds(ms)) == ms
        assert isinstance(wire.milliseconds(wire.seconds(ms)), int) == (ms == int(ms))
