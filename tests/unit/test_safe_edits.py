"""Editing the user's mesh.yaml (`meshcli split`, `meshcli route ...`, the testing API) never
loses anything: a symlink stays a link, the file keeps its mode, owner, group and hard
links, its byte order mark and CRLF line ends; a read-only file is refused; a dry run
writes nothing at all; a failed write leaves the old file whole."""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path

import pytest

from meshcli import status, workspace, yaml_source
from meshcli.cli.main import main
from meshcli.errors import MeshError

COMPOSE = """\
services:
  payment-v1: {image: pay, expose: ["8080"]}
  payment-v2: {image: pay, expose: ["8080"]}
"""
MESH = """\
apiVersion: meshcli/v1
services:
  payment:   # the money path
    timeout: 2s
"""
SPLIT = ["split", "payment", "v1=90", "v2=10", "--no-wait"]


@pytest.fixture
def shop(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "shop"
    root.mkdir()
    (root / "compose.yaml").write_text(COMPOSE)
    monkeypatch.chdir(root)
    monkeypatch.setattr(status, "project_running", lambda name: False)
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and mtime."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def test_a_symlinked_mesh_file_stays_a_link_and_its_target_is_edited(shop):
    shared = shop.parent / "shared"
    shared.mkdir()
    (shared / "mesh.yaml").write_text(MESH)
    (shop / "mesh.yaml").symlink_to("../shared/mesh.yaml")

    assert main(SPLIT) == 0

    assert (shop / "mesh.yaml").is_symlink() and os.readlink(shop / "mesh.yaml") == "../shared/mesh.yaml"
    assert "split: {v1: 90, v2: 10}" in (shared / "mesh.yaml").read_text()
    assert [p.name for p in shared.iterdir()] == ["mesh.yaml"]  # no temporary file left beside it


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664])
def test_the_file_keeps_its_mode(shop, mode):
    (shop / "mesh.yaml").write_text(MESH)
    os.chmod(shop / "mesh.yaml", mode)
    assert main(SPLIT) == 0
    assert stat.S_IMODE((shop / "mesh.yaml").stat().st_mode) == mode
    assert "split:" in (shop / "mesh.yaml").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_root_editing_a_users_file_keeps_its_owner_and_group(shop):
    (shop / "mesh.yaml").write_text(MESH)
    os.chown(shop / "mesh.yaml", 1000, 1000)
    assert main(SPLIT) == 0
    info = (shop / "mesh.yaml").stat()
    assert (info.st_uid, info.st_gid) == (1000, 1000)
    assert "split:" in (shop / "mesh.yaml").read_text()


def test_a_hard_linked_file_is_rewritten_in_place_and_keeps_its_links(shop):
    (shop / "mesh.yaml").write_text(MESH)
    os.link(shop / "mesh.yaml", shop / "mesh.backup.yaml")
    inode = (shop / "mesh.yaml").stat().st_ino

    assert main(SPLIT) == 0

    assert (shop / "mesh.yaml").stat().st_ino == inode and (shop / "mesh.yaml").stat().st_nlink == 2
    assert (shop / "mesh.backup.yaml").read_text() == (shop / "mesh.yaml").read_text()
    assert "split: {v1: 90, v2: 10}" in (shop / "mesh.yaml").read_text()
    assert sorted(p.name for p in shop.iterdir() if p.name.startswith(".mesh.yaml")) == []


@pytest.mark.parametrize("mode", [0o444, 0o400])
def test_a_read_only_file_is_refused_naming_it_and_nothing_changes(shop, capsys, mode):
    (shop / "mesh.yaml").write_text(MESH)
    os.chmod(shop / "mesh.yaml", mode)

    assert main(SPLIT) == 1  # also as root, who could write it: the user made it read-only

    err = capsys.readouterr().err
    assert f"{shop / 'mesh.yaml'} is read-only" in err and "Traceback" not in err
    assert (shop / "mesh.yaml").read_text() == MESH
    assert stat.S_IMODE((shop / "mesh.yaml").stat().st_mode) == mode
    assert not (shop / ".mesh" / "config" / "sidecar.json").exists()  # nothing was applied either


def test_a_byte_order_mark_and_crlf_line_ends_are_kept_and_the_dry_run_diff_shows_the_exact_change(shop, capsys):
    original = ("\ufeff" + MESH).replace("\n", "\r\n")
    (shop / "mesh.yaml").write_bytes(original.encode("utf-8"))

    assert main([*SPLIT, "--dry-run"]) == 0
    dry_run_diff = capsys.readouterr().out
    assert main(SPLIT) == 0

    written = (shop / "mesh.yaml").read_bytes()
    assert written.startswith(b"\xef\xbb\xbf") and written.count(b"\xef\xbb\xbf") == 1
    assert written.count(b"\n") == written.count(b"\r\n") == MESH.count("\n") + 1
    assert b"  payment:   # the money path\r\n    split: {v1: 90, v2: 10}\r\n    timeout: 2s\r\n" in written
    exact = "".join(difflib.unified_diff(original.splitlines(keepends=True),
                                         written.decode("utf-8").splitlines(keepends=True),
                                         fromfile=str(shop / "mesh.yaml"), tofile=str(shop / "mesh.yaml")))
    assert dry_run_diff == exact
    assert [line for line in dry_run_diff.splitlines(keepends=True) if line[0] in "+-" and line[1:2] not in "+-"] \
        == ["+    split: {v1: 90, v2: 10}\r\n"]  # only the new line: the rest is unchanged, BOM included


@pytest.mark.parametrize("with_mesh_file", [True, False])
def test_dry_run_writes_nothing_at_all(shop, capsys, with_mesh_file):
    if with_mesh_file:
        (shop / "mesh.yaml").write_text(MESH)
    before = tree(shop)

    assert main([*SPLIT, "--dry-run"]) == 0
    assert main(["route", "timeout", "payment", "300ms", "--dry-run"]) == 0

    assert "+    split: {v1: 90, v2: 10}" in capsys.readouterr().out
    assert tree(shop) == before  # no mesh.yaml, no .mesh/ directory, no .mesh/.lock


def test_the_testing_api_puts_a_hand_edited_bom_and_crlf_file_back_byte_for_byte(shop, monkeypatch):
    from meshcli import control_plane
    from meshcli.testing import Mesh

    original = ("\ufeff" + MESH).replace("\n", "\r\n").encode()
    (shop / "mesh.yaml").write_bytes(original)
    monkeypatch.setattr(control_plane, "wait_synced", lambda *args, **kwargs: [])
    mesh = Mesh(workspace.locate(shop / "compose.yaml"), owned=False)
    with mesh.scope():
        with mesh.timeout("payment", "300ms"):
            assert (shop / "mesh.yaml").read_bytes() == original  # a runtime rule: the file is not touched
        (shop / "mesh.yaml").write_text(MESH.replace("2s", "5s"))  # by hand, inside the test
    assert (shop / "mesh.yaml").read_bytes() == original


# --- atomic_write itself --------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(MeshError, match=f"cannot write {path}: No space left on device; it is unchanged"):
        yaml_source.atomic_write(path, "apiVersion: meshcli/v1\nservices: {}\n")
    assert path.read_text() == MESH
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.yaml"]


def test_a_failed_in_place_rewrite_puts_the_old_text_back(tmp_path, monkeypatch):
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    os.link(path, tmp_path / "other-link.yaml")
    real_fsync = os.fsync
    calls = []

    def fail_the_second(fd):  # the first fsync is the copy's; the second, the rewrite's
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_the_second)
    with pytest.raises(MeshError, match="could not rewrite .* in place: Input/output error; it is unchanged"):
        yaml_source.atomic_write(path, "apiVersion: meshcli/v1\n")
    assert path.read_text() == MESH == (tmp_path / "other-link.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.yaml", "other-link.yaml"]


def test_a_new_file_is_created_readable_by_all(tmp_path):
    yaml_source.atomic_write(tmp_path / "new.yaml", "a: 1\n")
    assert stat.S_IMODE((tmp_path / "new.yaml").stat().st_mode) == 0o644


@pytest.mark.parametrize("content, text, bom, newline", [
    ("a: 1\n", "a: 1\n", False, "\n"),
    ("\ufeffa: 1\r\nb: 2\r\n", "a: 1\nb: 2\n", True, "\r\n"),
    ("a: 1\r\nb: 2\n", "a: 1\nb: 2\n", False, "\r\n"),  # the line end most lines use
    ("a: 1\nb: 2\nc: 3\r\n", "a: 1\nb: 2\nc: 3\n", False, "\n"),
])
def test_text_files_remember_their_bom_and_line_ends(content, text, bom, newline):
    file = yaml_source.TextFile(Path("mesh.yaml"), content)
    assert (file.text, file.bom, file.newline) == (text, bom, newline)
    if content.count("\r\n") in (0, content.count("\n")):  # one style throughout: a perfect round trip
        assert file.encode(file.text) == content
