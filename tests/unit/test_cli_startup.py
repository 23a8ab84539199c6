"""`meshcli --help` stays fast: the heavy imports (docker SDK, ruamel, the sidecar's code) are
deferred into the commands that need them, and help is plain text (typer's rich help imports
rich's markdown and syntax highlighting: markdown_it, pygments)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("docker", "ruamel", "meshproxy", "mitmproxy", "watchdog", "markdown_it", "pygments")


def test_help_imports_nothing_heavy():
    code = ("import json, sys\n"
            "from meshcli.cli.main import main\n"
            "assert main(['--help']) == 0\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_options_of_a_panel_get_a_section_of_their_own(capsys):
    from meshcli.cli.main import main

    assert main(["up", "--help"]) == 0
    text = capsys.readouterr().out
    options, compose = text.index("\nOptions:\n"), text.index("\nCompose project (as for docker compose):\n")
    assert options < text.index("--no-wait") < compose < text.index("--project-name") and "--wait" not in text[compose:]
