"""ConfigWatcher: loads the compiled mesh config and re-applies it when the file changes.

The file is replaced atomically by meshcli (write + rename), so a watcher on its
directory sees every version whole. A bad file is logged and the last good config stays.

meshcli never compiles an invalid mesh.yaml; it writes `rejected.json` beside
sidecar.json instead (meshcli/control_plane.py). The watcher logs each rejection once,
with every error, and keeps it in `state.rejection` for /config_dump, until meshcli
removes the file on the next good apply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from meshproxy import config
from meshproxy.config import REJECTED_FILE, MeshState

logger = logging.getLogger("meshproxy.config")
CHANGE_EVENTS = {"created", "modified", "moved", "closed"}


class ConfigWatcher:
    def __init__(self, state: MeshState, path: Path | None = None) -> None:
        self.state = state
        self.path = path or config.config_path()
        self.rejected_path = self.path.parent / REJECTED_FILE
        self._observer: Observer | None = None
        self.state.rejection = None

    def read(self) -> None:
        """Load what is on disk now (before the proxy listens)."""
        self.reload()
        self._reload_rejection()

    def _reload_rejection(self) -> None:
        try:
            rejection = json.loads(self.rejected_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            rejection = None
        except (OSError, ValueError) as exc:
            rejection = {"errors": [f"{self.rejected_path}: unreadable: {exc}"]}
        if not isinstance(rejection, dict):
            rejection = None if rejection is None else {"errors": [f"{self.rejected_path}: not an object"]}
        if rejection == self.state.rejection:
            return  # each rejection is logged once, however many events its write fires
        self.state.rejection = rejection
        if rejection is None:
            return
        name = Path(str(rejection.get("file") or "mesh.yaml")).name
        generation = (rejection.get("keeping") or {}).get("generation")
        for error in rejection.get("errors") or ["(no details)"]:
            logger.error("%s rejected, keeping generation %s: %s", name, generation, error)

    def reload(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return  # not written yet: keep running with what we have
        except OSError as exc:
            self._reject(f"cannot read {self.path}: {exc}")
            return
        try:
            parsed = config.parse(text)
        except ValueError as exc:
            self._reject(f"{self.path}: {exc}")
            return
        if parsed.version != self.state.config.version or not self.state.loaded:
            self.state.apply(parsed)
            logger.info("config version %s applied", parsed.version)
        else:
            self.state.last_error = None  # the running version is back on disk: the rejection is over

    def _reject(self, message: str) -> None:
        self.state.last_error = message
        logger.error("config rejected, keeping version %s: %s", self.state.config.version or "none", message)

    def start(self) -> None:
        """Watch for changes; call with the event loop running."""
        loop = asyncio.get_running_loop()
        watcher = self

        class OnChange(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                # Only changes: our own reads fire open/close events that must not loop back.
                if event.event_type not in CHANGE_EVENTS | {"deleted"}:
                    return
                name = Path(getattr(event, "dest_path", "") or event.src_path).name
                if name == watcher.path.name:
                    loop.call_soon_threadsafe(watcher.reload)
                elif name == REJECTED_FILE:
                    loop.call_soon_threadsafe(watcher._reload_rejection)

        if not self.path.parent.is_dir():
            logger.error("config directory %s is missing: hot reload is off", self.path.parent)
            return
        self._observer = Observer()
        self._observer.schedule(OnChange(), str(self.path.parent), recursive=False)
        self._observer.daemon = True
        self._observer.start()
        self.reload()  # catch a change made between load() and the watch starting
        self._reload_rejection()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            # Joined, so no late event reaches an event loop that is closing.
            self._observer.join(timeout=2)


class InlineConfig:
    """In place of a ConfigWatcher when the config is given in code (tests, benchmarks):
    nothing to read or watch."""

    def read(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
