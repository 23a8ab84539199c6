"""The per-project controller: keeps every sidecar of its project running.

Docker's restart policy brings back a sidecar whose proxy crashed, but not one that
was `docker kill`ed (Docker counts a kill as a manual stop). Like a kubelet, this
controller watches the project's sidecar containers and starts any that died without
being stopped on purpose (`docker stop` and `compose down` emit a `stop` event).
It runs in its own container with the Docker socket, never inside a pod.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import docker
import docker.errors

from meshproxy.config import ENV_PROJECT

logger = logging.getLogger("meshproxy.controller")
GRACE_SECONDS = 0.5  # how long to wait for the `stop` event that follows a deliberate stop


def log(event: str, **fields) -> None:
    print(json.dumps({"time": round(time.time(), 3), "event": event, **fields}), flush=True)


class SidecarKeeper:
    def __init__(self, client, project: str) -> None:
        self.client = client
        self.project = project
        self._stopped_on_purpose: set[str] = set()
        self._lock = threading.Lock()

    def filters(self) -> dict:
        return {"type": "container",
                "label": [f"com.docker.compose.project={self.project}", "io.meshcli.role=sidecar"]}

    def handle(self, event: dict) -> None:
        action = event.get("Action") or event.get("status")
        container_id = event.get("id", "")
        if action == "stop":
            with self._lock:
                self._stopped_on_purpose.add(container_id)
        elif action == "start":
            with self._lock:
                self._stopped_on_purpose.discard(container_id)
        elif action == "die":
            timer = threading.Timer(GRACE_SECONDS, self._revive, args=(container_id, event))
            timer.daemon = True
            timer.start()

    def _revive(self, container_id: str, event: dict) -> None:
        with self._lock:
            if container_id in self._stopped_on_purpose:
                return
        try:
            container = self.client.containers.get(container_id)
            if container.status == "running":
                return  # Docker's restart policy already brought it back
            container.start()
            log("sidecar_restarted", container=container.name,
                exit_code=event.get("Actor", {}).get("Attributes", {}).get("exitCode"))
        except docker.errors.DockerException as exc:
            log("sidecar_restart_failed", container=container_id[:12], error=str(exc))

    def run(self) -> None:
        log("controller_started", project=self.project)
        for event in self.client.events(decode=True, filters=self.filters()):
            self.handle(event)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    project = os.environ[ENV_PROJECT]
    SidecarKeeper(docker.from_env(), project).run()


if __name__ == "__main__":
    main()
