"""A packet capture for the mTLS test: what crosses the wire of one pod's network.

Usage: python sniffer.py INTERFACE SECONDS NEEDLE... Run in a helper container that joins
a pod's network namespace with NET_RAW (docker run --network container:POD --cap-add
NET_RAW). Reads every TCP segment on INTERFACE (AF_PACKET, so not the pod's loopback,
where the sidecar talks to its app) for SECONDS, then prints JSON: the ports seen, how
many TLS ServerHellos negotiated TLS 1.3 (the supported_versions extension) or something
else, and which NEEDLEs (plaintext that must not appear) were seen in a payload. The
sidecar's own admin, health and metrics ports (a Prometheus scraping 15090, as Istio's,
is plaintext by design) are left out: the claim is about the traffic between workloads.
Standard library only.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
TELEMETRY_PORTS = frozenset({15000, 15020, 15090})  # meshproxy.config's ADMIN, HEALTH and METRICS ports
SUPPORTED_VERSIONS = 0x002B


def server_hello_version(payload: bytes) -> int | None:
    """The version a TLS ServerHello in this segment negotiated, or None when there is none."""
    at = 0
    while at + 5 <= len(payload):
        content_type, _, length = struct.unpack_from("!BHH", payload, at)
        record = payload[at + 5:at + 5 + length]
        at += 5 + length
        if content_type != 22 or len(record) < 4 or record[0] != 2:  # handshake, ServerHello
            continue
        body = record[4:]
        legacy_version = struct.unpack_from("!H", body, 0)[0]
        pos = 2 + 32  # version, random
        session_id_length = body[pos]
        pos += 1 + session_id_length + 2 + 1  # session id, cipher suite, compression
        if pos + 2 > len(body):
            return legacy_version
        extensions_end = pos + 2 + struct.unpack_from("!H", body, pos)[0]
        pos += 2
        while pos + 4 <= min(extensions_end, len(body)):
            kind, size = struct.unpack_from("!HH", body, pos)
            if kind == SUPPORTED_VERSIONS and size == 2:
                return struct.unpack_from("!H", body, pos + 4)[0]
            pos += 4 + size
        return legacy_version
    return None


def main(interface: str, seconds: float, needles: list[str]) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    sock.bind((interface, 0))
    sock.settimeout(0.2)
    ports: set[int] = set()
    versions: list[str] = []
    seen: set[str] = set()
    segments = 0
    deadline = time.monotonic() + seconds
    print(json.dumps({"listening": interface}), flush=True)
    while time.monotonic() < deadline:
        try:
            frame = sock.recv(65536)
        except socket.timeout:
            continue
        if len(frame) < 14 + 20 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:  # IPv4
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 6:  # TCP
            continue
        tcp = ip[header:]
        src, dst = struct.unpack_from("!HH", tcp, 0)
        if src in TELEMETRY_PORTS or dst in TELEMETRY_PORTS:
            continue
        payload = tcp[(tcp[12] >> 4) * 4:struct.unpack_from("!H", ip, 2)[0] - header]
        if not payload:
            continue
        segments += 1
        ports.update((src, dst))
        version = server_hello_version(payload)
        if version is not None:
            versions.append(hex(version))
        seen.update(needle for needle in needles if needle.encode() in payload)
    print(json.dumps({"segments": segments, "ports": sorted(ports), "server_hellos": versions,
                      "plaintext": sorted(seen)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3:])
