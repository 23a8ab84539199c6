"""`meshcli --help` stays fast: the heavy imports (docker SDK, ruamel, the sidecar's code) are
deferred into the commands that need them."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("docker", "ruamel", "meshproxy", "mitmproxy", "watchdog")


def test_help_imports_nothing_heavy():
    code = ("import json, sys\n"
            "from meshcli.cli.main import main\n"
            "assert main(['--help']) == 0\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []
