"""The systemd timer for machines without Airflow: schedules/systemd/powerpipe.{service,timer}."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from powerpipe.core import paths

SYSTEMD = paths.PROJECT_ROOT / "schedules" / "systemd"
PLACEHOLDER = "/srv/powerpipe"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text(encoding="utf-8"))
    return parser


def test_timer_runs_weekly_and_catches_up_after_downtime():
    timer = unit("powerpipe.timer")
    assert timer["Timer"]["OnCalendar"] == "weekly"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["Unit"] == "powerpipe.service"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_service_runs_the_whole_pipeline_in_the_project_venv_refusing_overlap():
    service = unit("powerpipe.service")["Service"]
    assert service["Type"] == "oneshot"
    assert service["WorkingDirectory"] == PLACEHOLDER
    command = shlex.split(service["ExecStart"])
    assert command[:2] == [f"{PLACEHOLDER}/.venv/bin/python", "runner/run_all.py"]
    assert command[command.index("--if-running") + 1] == "fail"
    # no stage flags: the whole run, which takes the outputs lock itself
    assert not {"--start", "--stage", "--pipeline-run", "--finish"} & set(command)
    # retried on a failed notebook, never on bad input (2) or a folder held by another run (75)
    assert service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "75"}
    assert service["KillMode"] == "mixed"  # SIGTERM to the runner first: it stops its kernels itself


def test_the_commands_in_the_docs_name_these_files():
    page = (paths.PROJECT_ROOT / "docs" / "running-every-week.md").read_text(encoding="utf-8")
    for name in ("powerpipe.service", "powerpipe.timer", "systemctl enable --now powerpipe.timer",
                 "systemctl list-timers", "journalctl -u powerpipe.service"):
        assert name in page, name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_both_units(tmp_path):
    # The placeholder path pointed at this checkout and its interpreter, as an installation does.
    venv_python = Path(sys.executable)
    for name in ("powerpipe.service", "powerpipe.timer"):
        text = (SYSTEMD / name).read_text(encoding="utf-8")
        text = text.replace(f"{PLACEHOLDER}/.venv/bin/python", str(venv_python))
        text = text.replace(PLACEHOLDER, str(paths.PROJECT_ROOT))
        (tmp_path / name).write_text(text, encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "powerpipe.timer"),
                             str(tmp_path / "powerpipe.service")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Unknown keys or bad values are only warned about (exit 0): none may be.
    assert "powerpipe" not in result.stderr, result.stderr
    calendar = subprocess.run(["systemd-analyze", "calendar", "weekly"], capture_output=True, text=True, timeout=30)
    assert "Mon *-*-* 00:00:00" in calendar.stdout
