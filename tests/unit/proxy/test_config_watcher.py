"""ConfigWatcher: load sidecar.json at start, hot-reload it on change, never apply a bad one."""

import asyncio
import json
import time

import pytest

from meshcli.yaml_source import atomic_write  # how meshcli writes sidecar.json
from meshproxy.config_watcher import ConfigWatcher
from meshproxy.config import Identity, MeshState

HOT_RELOAD_TIMEOUT = 2.0


def sidecar_json(version: str, host: str = "payment-v1") -> str:
    return json.dumps({"schema": 2, "version": version,
                       "services": {"payment": {"versions": [{"name": "v1", "host": host}]}}})


@pytest.fixture
def path(tmp_path):
    return tmp_path / "sidecar.json"


@pytest.fixture
def state():
    return MeshState(Identity("shop", "web-v1", "web", "v1"))


def test_load_applies_a_valid_file(path, state):
    path.write_text(sidecar_json("v-one"))

    ConfigWatcher(state, path).read()

    assert state.loaded
    assert state.config.version == "v-one"
    assert state.config.services["payment"].versions[0].host == "payment-v1"
    assert state.last_error is None


def test_missing_file_is_not_an_error(path, state):
    ConfigWatcher(state, path).read()

    assert not state.loaded
    assert state.config.version == ""
    assert state.last_error is None


def test_invalid_file_is_rejected_and_the_last_good_config_stays(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()
    good = state.config

    path.write_text('{"schema": 2, "version": "v-two", "services": {"payment": {"versions": [{"name": "v1"}]}}}')
    watcher.reload()

    assert state.config is good
    assert state.loaded
    assert str(path) in state.last_error
    assert "'host'" in state.last_error


def test_invalid_first_file_leaves_the_sidecar_unconfigured(path, state):
    path.write_text("{not json")

    ConfigWatcher(state, path).read()

    assert not state.loaded
    assert "not JSON" in state.last_error


def test_unreadable_file_is_rejected(path, state):
    path.mkdir()  # reading a directory fails with an OSError other than FileNotFoundError

    ConfigWatcher(state, path).read()

    assert not state.loaded
    assert state.last_error.startswith("cannot read")


def test_same_version_is_not_applied_twice(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    applied = []
    state.subscribe(applied.append)

    watcher.read()
    watcher.reload()

    assert [c.version for c in applied] == ["", "v-one"]


def test_error_clears_when_the_good_file_is_back(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()
    path.write_text("garbage")
    watcher.reload()
    assert state.last_error

    path.write_text(sidecar_json("v-one"))
    watcher.reload()

    assert state.last_error is None
    assert state.config.version == "v-one"


async def wait_for(condition, timeout: float = HOT_RELOAD_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


def run_watching(watcher: ConfigWatcher, scenario) -> None:
    """Run scenario() in an event loop while the watcher watches, as in the proxy."""
    async def main():
        watcher.start()
        try:
            await scenario()
        finally:
            watcher.stop()
            # stop() joins the observer: no event may reach the loop after it closes
            assert watcher._observer is None or not watcher._observer.is_alive()
    asyncio.run(main())


def counting_reloads(watcher: ConfigWatcher) -> list[float]:
    """Record every reload (time of call) while still doing it."""
    calls: list[float] = []
    real = watcher.reload

    def reload() -> None:
        calls.append(time.monotonic())
        real()
    watcher.reload = reload
    return calls


def test_atomic_rewrite_is_picked_up(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()

    async def scenario():
        atomic_write(path, sidecar_json("v-two", host="payment-v9"))
        assert await wait_for(lambda: state.config.version == "v-two")

    run_watching(watcher, scenario)
    assert state.config.services["payment"].versions[0].host == "payment-v9"


def test_in_place_rewrite_is_picked_up(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()

    async def scenario():
        path.write_text(sidecar_json("v-two"))
        assert await wait_for(lambda: state.config.version == "v-two")

    run_watching(watcher, scenario)


def test_file_written_after_start_is_picked_up(path, state):
    watcher = ConfigWatcher(state, path)
    watcher.read()
    assert not state.loaded

    async def scenario():
        atomic_write(path, sidecar_json("v-one"))
        assert await wait_for(lambda: state.loaded)

    run_watching(watcher, scenario)
    assert state.config.version == "v-one"


def test_bad_rewrite_is_rejected_while_running(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()

    async def scenario():
        atomic_write(path, "{broken")
        assert await wait_for(lambda: state.last_error is not None)
        atomic_write(path, sidecar_json("v-three"))
        assert await wait_for(lambda: state.config.version == "v-three")

    run_watching(watcher, scenario)
    assert state.last_error is None


def test_reading_the_file_does_not_loop(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()
    calls = counting_reloads(watcher)

    async def scenario():
        await asyncio.sleep(0.3)
        calls.clear()  # the catch-up reload start() does, and anything it caused
        atomic_write(path, sidecar_json("v-two"))
        assert await wait_for(lambda: state.config.version == "v-two")
        await asyncio.sleep(0.5)

    run_watching(watcher, scenario)
    # one change, a few events (rename, maybe close); each reload reads the file, which must not count
    assert 1 <= len(calls) <= 3, calls


def test_idle_watcher_does_not_reload(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()
    calls = counting_reloads(watcher)

    async def scenario():
        await asyncio.sleep(0.5)

    run_watching(watcher, scenario)
    assert len(calls) == 1  # only the catch-up reload of start(); its own read fires nothing


def test_other_files_in_the_directory_are_ignored(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()
    calls = counting_reloads(watcher)

    async def scenario():
        await asyncio.sleep(0.3)
        calls.clear()
        atomic_write(path.parent / "ca.pem", "not a config")
        (path.parent / "notes.txt").write_text("hello")
        await asyncio.sleep(0.5)

    run_watching(watcher, scenario)
    assert calls == []


def test_missing_directory_turns_hot_reload_off(tmp_path, state):
    watcher = ConfigWatcher(state, tmp_path / "absent" / "sidecar.json")

    async def scenario():
        pass

    run_watching(watcher, scenario)
    assert watcher._observer is None
    assert not state.loaded


# --- rejected.json: meshcli's record of an invalid mesh.yaml -----------------------------

def rejection_json(*errors: str, generation: int = 4) -> str:
    return json.dumps({"time": 1.0, "file": "/src/shop/mesh.yaml", "errors": list(errors),
                       "keeping": {"version": "v-one", "generation": generation}})


def test_a_rejection_is_logged_once_per_error_and_kept_in_the_state(path, state, caplog):
    path.write_text(sidecar_json("v-one"))
    (path.parent / "rejected.json").write_text(rejection_json("/src/shop/mesh.yaml:4:14: bad duration",
                                                              "/src/shop/mesh.yaml:5:5: unknown field"))
    watcher = ConfigWatcher(state, path)

    watcher.read()
    watcher._reload_rejection()  # a second event for the same write

    assert state.rejection["errors"][0] == "/src/shop/mesh.yaml:4:14: bad duration"
    logged = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert logged == ["mesh.yaml rejected, keeping generation 4: /src/shop/mesh.yaml:4:14: bad duration",
                      "mesh.yaml rejected, keeping generation 4: /src/shop/mesh.yaml:5:5: unknown field"]
    assert state.config.version == "v-one"  # the config itself is untouched


def test_no_rejection_file_means_no_rejection(path, state):
    ConfigWatcher(state, path).read()

    assert state.rejection is None


def test_a_rejection_written_and_removed_while_running(path, state):
    path.write_text(sidecar_json("v-one"))
    watcher = ConfigWatcher(state, path)
    watcher.read()
    rejected = path.parent / "rejected.json"

    async def scenario():
        atomic_write(rejected, rejection_json("/src/shop/mesh.yaml:2:1: broken"))
        assert await wait_for(lambda: state.rejection is not None)
        rejected.unlink()  # meshcli removes it when a good mesh.yaml is applied
        assert await wait_for(lambda: state.rejection is None)

    run_watching(watcher, scenario)
