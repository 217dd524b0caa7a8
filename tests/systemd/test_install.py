"""`ollamad install-systemd` staged into a temporary --root: files, paths, and no system commands."""

from __future__ import annotations

import stat
import sys
import tempfile
from pathlib import Path, PurePosixPath

import pytest

from ollamad import install
from ollamad.config import load


#: The interpreter install-systemd believes it runs from: its venv's bin/ollamad
#: is the default ExecStart=, whatever venv actually runs the tests.
VENV_PYTHON = "/srv/venv/bin/python3"


@pytest.fixture(autouse=True)
def isolated(monkeypatch):
    """Any attempt to run systemd-sysusers, systemd-tmpfiles or systemctl fails the test."""
    def refuse(command):
        raise AssertionError(f"ran a system command: {command}")
    monkeypatch.setattr(install, "run_command", refuse)
    monkeypatch.setattr(install.sys, "executable", VENV_PYTHON)


def installed(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_stages_every_file(tmp_path, capsys):
    assert install.main(["--root", str(tmp_path)]) == 0

    unit = installed(tmp_path, "/etc/systemd/system/ollamad.service").read_text()
    assert "\nExecStart=/srv/venv/bin/ollamad serve --config /etc/ollamad/ollamad.toml\n" in unit
    assert unit == install.unit_text("/srv/venv/bin/ollamad")
    sysusers = installed(tmp_path, "/etc/sysusers.d/ollamad.conf")
    tmpfiles = installed(tmp_path, "/etc/tmpfiles.d/ollamad.conf")
    assert sysusers.read_text() == install.shipped_text("ollamad.sysusers")
    assert tmpfiles.read_text() == install.shipped_text("ollamad.tmpfiles")
    config = installed(tmp_path, "/etc/ollamad/ollamad.toml")
    assert config.read_text() == install.installed_config_text()
    assert (mode(sysusers), mode(tmpfiles), mode(config)) == (0o644, 0o644, 0o640)
    assert not installed(tmp_path, str(install.PULLING_PATH)).exists()

    output = capsys.readouterr().out
    assert "systemd-tmpfiles --create /etc/tmpfiles.d/ollamad.conf" in output
    assert "systemctl enable --now ollamad" in output
    assert "usermod -aG ollamad-clients APPUSER" in output
    assert "usermod -aG ollamad-admin OPERATOR" in output


def test_the_installed_config_gives_the_socket_and_admin_ops_to_the_shipped_groups(tmp_path):
    path = tmp_path / "ollamad.toml"
    path.write_text(install.installed_config_text())
    config = load(str(path), env={})
    assert (config.socket_group, config.admin_group) == ("ollamad-clients", "ollamad-admin")
    # The groups are those the sysusers.d file creates, the daemon a member of the first.
    sysusers = install.shipped_text("ollamad.sysusers").splitlines()
    assert {"g ollamad-clients -", "m ollamad ollamad-clients", "g ollamad-admin -"} <= set(sysusers)
    # No application user joins the service's own group, which reads the config.
    assert "ollamad-clients" in next(line for line in install.shipped_text("ollamad.service")
                                     .splitlines() if line.startswith("SupplementaryGroups="))


def test_pulling_installs_the_drop_in(tmp_path, capsys):
    assert install.main(["--root", str(tmp_path), "--pulling"]) == 0
    drop_in = installed(tmp_path, str(install.PULLING_PATH))
    assert drop_in.read_text() == install.shipped_text("ollamad-pulling.conf")
    assert "\n[Service]\nPrivateNetwork=no\nIPAddressAllow=any\n" in drop_in.read_text()
    assert mode(drop_in) == 0o644


def test_prefix_sets_the_executable(tmp_path):
    assert install.main(["--root", str(tmp_path), "--prefix", "/opt/ollamad"]) == 0
    unit = installed(tmp_path, "/etc/systemd/system/ollamad.service").read_text()
    assert "\nExecStart=/opt/ollamad/bin/ollamad serve --config /etc/ollamad/ollamad.toml\n" in unit


def test_keeps_an_existing_config_unless_forced(tmp_path, capsys):
    config = installed(tmp_path, "/etc/ollamad/ollamad.toml")
    config.parent.mkdir(parents=True)
    config.write_text("workers = 4\n")

    assert install.main(["--root", str(tmp_path)]) == 0
    assert config.read_text() == "workers = 4\n"
    assert "kept existing" in capsys.readouterr().out
    assert installed(tmp_path, "/etc/systemd/system/ollamad.service").exists()

    assert install.main(["--root", str(tmp_path), "--force"]) == 0
    assert config.read_text() == install.installed_config_text()


def test_rewrites_the_unit_on_reinstall(tmp_path):
    unit = installed(tmp_path, "/etc/systemd/system/ollamad.service")
    unit.parent.mkdir(parents=True)
    unit.write_text("stale")
    assert install.main(["--root", str(tmp_path), "--prefix", "/opt/x"]) == 0
    assert unit.read_text() == install.unit_text("/opt/x/bin/ollamad")


@pytest.mark.parametrize("prefix, setting", [("/home/alice/venv", "ProtectHome=yes"),
                                              ("/root/venv", "ProtectHome=yes"),
                                              ("/tmp/venv", "PrivateTmp=yes"),
                                              ("/var/tmp/q/venv", "PrivateTmp=yes")])
def test_refuses_an_executable_the_unit_hides(tmp_path, prefix, setting, capsys):
    assert install.main(["--root", str(tmp_path), "--prefix", prefix]) == 1
    assert f"hides ({setting})" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_refuses_an_interpreter_or_package_the_unit_hides(tmp_path):
    # The quickstart's venv under /tmp, with the script elsewhere: on this
    # system the interpreter its #! names is checked too.
    venv_python = tmp_path / "venv" / "bin" / "python3"     # pytest's tmp_path is below /tmp
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    assert install.unreachable_reason(Path("/usr/bin/env"), True) is None
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        script = Path(elsewhere) / "ollamad"
        script.write_text(f"#!{venv_python}\n")
        reason = install.unreachable_reason(script, True)
    assert reason.startswith(f"its interpreter {venv_python} is below"), reason
    assert "PrivateTmp=yes" in reason
    # An editable install whose source the unit hides.
    reason = install.unreachable_reason(Path("/usr/bin/env"), True,
                                        package=Path("/root/src/ollamad"))
    assert reason.startswith("the ollamad package /root/src/ollamad is below"), reason
    assert "ProtectHome=yes" in reason


def test_refuses_paths_execstart_cannot_hold(tmp_path, capsys):
    assert install.main(["--root", str(tmp_path), "--prefix", "/opt/my venv"]) == 1
    assert "ExecStart" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unit_text_escapes_specifiers():
    assert "\nExecStart=/opt/a%%b/bin/ollamad serve " in install.unit_text("/opt/a%b/bin/ollamad")
    with pytest.raises(ValueError):
        install.unit_text("venv/bin/ollamad")


def test_points_out_an_existing_ollama_service(tmp_path, capsys):
    ollama_unit = installed(tmp_path, "/etc/systemd/system/ollama.service")
    ollama_unit.parent.mkdir(parents=True)
    ollama_unit.write_text("[Service]\n")
    assert install.main(["--root", str(tmp_path)]) == 0
    assert "systemctl disable --now ollama" in capsys.readouterr().out


def test_real_root_needs_root(monkeypatch, capsys):
    def refuse(*args):
        raise AssertionError("wrote into /")
    monkeypatch.setattr(install, "write_file", refuse)
    monkeypatch.setattr(install.os, "geteuid", lambda: 1000)
    assert install.main(["--root", "/", "--prefix", "/opt/ollamad"]) == 1
    assert "needs root" in capsys.readouterr().err


def test_system_commands_touch_only_ollamad_files():
    assert install.SYSTEM_COMMANDS == (
        ("systemd-sysusers", "/etc/sysusers.d/ollamad.conf"),
        ("systemd-tmpfiles", "--create", "/etc/tmpfiles.d/ollamad.conf"),
        ("systemctl", "daemon-reload"),
    )


@pytest.mark.parametrize("path, setting", [
    ("/home/a/bin/ollamad", "ProtectHome=yes"), ("/root", "ProtectHome=yes"),
    ("/run/user/1000/x", "ProtectHome=yes"), ("/tmp/venv/bin/python", "PrivateTmp=yes"),
    ("/var/tmp/x", "PrivateTmp=yes"), ("/homeless/bin/ollamad", None),
    ("/tmpfoo/bin/ollamad", None), ("/opt/ollamad/bin/ollamad", None)])
def test_hiding_setting(path, setting):
    assert install.hiding_setting(PurePosixPath(path)) == setting


def test_interpreter_of_reads_the_shebang(tmp_path):
    script = tmp_path / "ollamad"
    script.write_text(f"#!{sys.executable}\nimport sys\n")
    assert install.interpreter_of(script) == Path(sys.executable).resolve()
    script.write_bytes(b"\x7fELF")
    assert install.interpreter_of(script) is None
