"""Fixtures for the control-plane unit tests. Projects live in `<tmp_path>/shop`, so the
compose project name is always "shop"; see mesh_files.py for the helpers."""

from __future__ import annotations

import pytest

from mesh_files import Files


@pytest.fixture
def files(tmp_path) -> Files:
    return Files(tmp_path / "shop")
