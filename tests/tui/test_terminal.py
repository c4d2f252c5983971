"""A real terminal: `sfttui` under tmux (a private tmux server), keys sent, the screen read back
with capture-pane, `q` quits with exit code 0."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup.sh installs it with apt-get)"
)


def wait_for(tmux: list[str], *texts: str, timeout: float = 60.0) -> str:
    screen = ""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        screen = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "sfttui"], capture_output=True, text=True, check=False
        ).stdout
        if all(t in screen for t in texts):
            return screen
        time.sleep(0.3)
    raise AssertionError(f"{texts!r} never all appeared on the terminal; it shows:\n{screen}")


def test_sfttui_in_a_real_terminal(runs_base: Path, tmp_path: Path) -> None:
    sock = f"sfttui-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    rc_file = tmp_path / "rc"
    sfttui = Path(sys.executable).with_name("sfttui")
    env = f"PYTHONPATH={os.environ.get('PYTHONPATH', '')} TERM=xterm-256color"
    cmd = f"cd {runs_base} && env {env} {sfttui} runs/audit; echo $? > {rc_file}"
    subprocess.run([*tmux, "new-session", "-d", "-s", "sfttui", "-x", "100", "-y", "30", cmd], check=True)
    try:
        wait_for(tmux, "FAIL", "tokens.special-in-content", "1 Overview")  # the overview: verdict and counts
        subprocess.run([*tmux, "send-keys", "-t", "sfttui", "2"], check=True)
        wait_for(tmux, "format.parse-error", "⏎ open")  # the footer shows enter once the table has focus
        subprocess.run([*tmux, "send-keys", "-t", "sfttui", "Enter"], check=True)
        wait_for(tmux, "message 0", "finding")  # the example's token view and its findings
        subprocess.run([*tmux, "send-keys", "-t", "sfttui", "q"], check=True)
        end = time.monotonic() + 30
        while not rc_file.exists() and time.monotonic() < end:
            time.sleep(0.2)
        assert rc_file.read_text().strip() == "0"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, check=False)
