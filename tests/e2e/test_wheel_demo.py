"""`meshcli demo` from an installed wheel whose site-packages is read-only: the demo runs
on a copy, and nothing is ever written inside the package (issue 11)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_meshcli_demo_from_a_read_only_wheel_install(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "-w", str(dist), "--no-deps", "-q"],
                   check=True, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", *dist.glob("*.whl")],
                   check=True, timeout=300)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # meshcli's dependencies from this interpreter (its .pth files, e.g. an editable meshcli, are not read)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(["chmod", "-R", "a-w", str(site)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "PYTHON"))}
    try:
        before = tree_digest(site)
        where = subprocess.run([venv / "bin" / "python", "-c", "import meshcli; print(meshcli.__file__)"],
                               capture_output=True, text=True, env=env, check=True, cwd=tmp_path).stdout
        assert where.startswith(str(site))
        work.mkdir()
        meshcli = str(venv / "bin" / "meshcli")

        nothing = subprocess.run([meshcli, "render"], cwd=work, capture_output=True, text=True, env=env)
        assert nothing.returncode == 2 and "no configuration file provided" in nothing.stderr

        copied = subprocess.run([meshcli, "demo", "--no-up"], cwd=work, capture_output=True, text=True, env=env)
        assert copied.returncode == 0, copied.stderr
        compose_dir = work / "meshcli-demo" / "compose"
        rendered = subprocess.run([meshcli, "render", "-o", "-"], cwd=compose_dir, capture_output=True, text=True,
                                  env=env)
        assert rendered.returncode == 0, rendered.stderr
        assert "payment-v2-sidecar:" in rendered.stdout and f"{work}/meshcli-demo/sample-apps" in rendered.stdout
        split = subprocess.run([meshcli, "split", "payment", "v1=90", "v2=10"], cwd=compose_dir,
                               capture_output=True, text=True, env=env)
        assert split.returncode == 0, split.stderr
        assert "v1: 90" in (compose_dir / "mesh.yaml").read_text()

        again = subprocess.run([meshcli, "demo", "--no-up"], cwd=work, capture_output=True, text=True, env=env)
        assert again.returncode == 0 and "using the demo copy" in again.stderr
        assert "v1: 90" in (compose_dir / "mesh.yaml").read_text()  # a previous copy is used as it is
        (work / "mine").mkdir()
        (work / "mine" / "notes.txt").write_text("mine\n")
        refused = subprocess.run([meshcli, "demo", "mine", "--no-up"], cwd=work, capture_output=True, text=True,
                                 env=env)
        assert refused.returncode == 2 and [p.name for p in (work / "mine").iterdir()] == ["notes.txt"]
        assert tree_digest(site) == before
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(site)])
