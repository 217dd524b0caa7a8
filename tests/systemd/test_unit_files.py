"""The shipped unit, sysusers.d and tmpfiles.d files, checked by systemd's own tools.

No systemd manager is started: `systemd-analyze verify` and `security
--offline=yes` read the file only, and sysusers/tmpfiles run with `--root`
inside tmp_path.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ollamad import install

REPO = Path(__file__).resolve().parents[2]
TOOL_TIMEOUT_S = 60
MAX_EXPOSURE = 1.6
# Plain output, no pager, no colours; nothing inherited that redirects systemd.
TOOL_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_PAGER": "cat",
            "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def run_tool(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                          env=TOOL_ENV, stdin=subprocess.DEVNULL)


@pytest.fixture
def installed_unit(tmp_path) -> Path:
    """The unit as install-systemd writes it, its ExecStart= an existing executable."""
    executable = tmp_path / "prefix" / "bin" / "ollamad"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = tmp_path / "root" / "etc" / "systemd" / "system" / "ollamad.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(install.unit_text(str(executable)))
    return unit


def test_verify_prints_nothing(installed_unit):
    result = run_tool(tool("systemd-analyze"), "verify", str(installed_unit))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_does_report_mistakes(tmp_path):
    """verify exits 0 on unknown keys: the check above relies on stderr instead."""
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nExecStart=/bin/true\nNoSuchDirective=1\n")
    result = run_tool(tool("systemd-analyze"), "verify", str(unit))
    assert "NoSuchDirective" in result.stderr


def test_security_exposure_is_low(installed_unit):
    result = run_tool(tool("systemd-analyze"), "security", "--offline=yes", str(installed_unit))
    if "--offline" in result.stderr:
        pytest.skip(f"systemd-analyze security has no --offline here: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for ollamad\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_names_the_config_and_reload_signal():
    unit = install.shipped_text("ollamad.service")
    assert f"ExecStart={install.SHIPPED_EXECUTABLE} serve --config /etc/ollamad/ollamad.toml\n" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID\n" in unit
    assert "\nType=notify\n" in unit and "\nNotifyAccess=main\n" in unit


@pytest.fixture
def system_root(tmp_path) -> Path:
    """An empty root for sysusers/tmpfiles; they change ownership, so root is required."""
    if os.geteuid() != 0:
        pytest.skip("systemd-sysusers/systemd-tmpfiles --root need root to chown")
    root = tmp_path / "system"
    (root / "etc").mkdir(parents=True)
    return root


def apply_sysusers(root: Path) -> None:
    result = run_tool(tool("systemd-sysusers"), f"--root={root}",
                      str(REPO / "systemd" / "ollamad.sysusers"))
    assert result.returncode == 0, result.stderr


def test_sysusers_creates_user_group_and_memberships(system_root):
    apply_sysusers(system_root)
    users = {line.split(":")[0]: line.split(":") for line in
             (system_root / "etc" / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (system_root / "etc" / "group").read_text().splitlines()}
    name, _, uid, gid, _, home, shell = users["ollamad"]
    assert (home, shell.endswith("nologin")) == ("/var/lib/ollamad", True)
    assert groups["ollamad"][2] == gid
    assert "ollamad" in groups["video"][3].split(",")
    assert "ollamad" in groups["render"][3].split(",")


def test_tmpfiles_creates_directories_and_fixes_config_mode(system_root):
    apply_sysusers(system_root)
    config = system_root / "etc" / "ollamad" / "ollamad.toml"
    config.parent.mkdir()
    config.write_text("")
    config.chmod(0o600)
    result = run_tool(tool("systemd-tmpfiles"), f"--root={system_root}", "--create",
                      str(REPO / "systemd" / "ollamad.tmpfiles"))
    assert result.returncode == 0, result.stderr

    def id_of(database: str) -> int:
        return next(int(line.split(":")[2]) for line in
                    (system_root / "etc" / database).read_text().splitlines()
                    if line.startswith("ollamad:"))

    uid, gid = id_of("passwd"), id_of("group")

    def owner_and_mode(path: Path) -> tuple[int, int, int]:
        status = path.stat()
        return status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)

    assert owner_and_mode(system_root / "etc" / "ollamad") == (0, 0, 0o755)
    assert owner_and_mode(config) == (0, gid, 0o640)
    for directory in ("var/lib/ollamad", "var/lib/ollamad/models"):
        assert owner_and_mode(system_root / directory) == (uid, gid, 0o750)


@pytest.mark.parametrize("name", ["ollamad.service", "ollamad.sysusers", "ollamad.tmpfiles"])
def test_systemd_folder_is_the_packaged_copy(name):
    """One source of truth: systemd/ links to the files shipped in the package."""
    packaged = REPO / "daemon" / "ollamad" / "systemd_files" / name
    assert (REPO / "systemd" / name).samefile(packaged)
    assert install.shipped_text(name) == packaged.read_text()
