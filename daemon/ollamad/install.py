"""`ollamad install-systemd`: install the systemd unit, sysusers.d and tmpfiles.d files and a config.

The files ship inside the package (`ollamad/systemd_files/`), so a pip-installed
copy can install itself:

- `/etc/systemd/system/ollamad.service`, its ExecStart= pointing at the
  `ollamad` executable of this virtual environment (or `PREFIX/bin/ollamad`),
- `/etc/sysusers.d/ollamad.conf` and `/etc/tmpfiles.d/ollamad.conf`,
- `/etc/ollamad/ollamad.toml`, the example config with the groups the
  sysusers.d file creates (``socket_group``, ``admin_group``), never
  replacing an existing one unless `--force`,
- with `--pulling`, the drop-in a host that pulls models needs
  (`/etc/systemd/system/ollamad.service.d/ollamad-pulling.conf`).

Under `--root DIR` the files are staged below DIR and nothing else happens.
With the real root it then runs `systemd-sysusers` and
`systemd-tmpfiles --create` on exactly these two files and
`systemctl daemon-reload`; `--no-reload` skips that.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path, PurePosixPath

#: The executable the shipped unit names; replaced when installing.
SHIPPED_EXECUTABLE = "/opt/ollamad/bin/ollamad"

UNIT_PATH = PurePosixPath("/etc/systemd/system/ollamad.service")
SYSUSERS_PATH = PurePosixPath("/etc/sysusers.d/ollamad.conf")
TMPFILES_PATH = PurePosixPath("/etc/tmpfiles.d/ollamad.conf")
CONFIG_PATH = PurePosixPath("/etc/ollamad/ollamad.toml")
PULLING_PATH = PurePosixPath("/etc/systemd/system/ollamad.service.d/ollamad-pulling.conf")
#: The groups of the shipped sysusers.d file, set in the installed config.
INSTALLED_SETTINGS = {"socket_group": "ollamad-clients", "admin_group": "ollamad-admin"}

#: Shipped file name → where it goes on the target system.
SHIPPED_FILES = {
    "ollamad.service": UNIT_PATH,
    "ollamad.sysusers": SYSUSERS_PATH,
    "ollamad.tmpfiles": TMPFILES_PATH,
}

#: Run in this order on the real root: the user must exist before tmpfiles
#: chowns to it. tmpfiles gets its one file: a bare --create (or --remove,
#: --boot) would apply every tmpfiles.d rule on the host.
SYSTEM_COMMANDS = (
    ("systemd-sysusers", str(SYSUSERS_PATH)),
    ("systemd-tmpfiles", "--create", str(TMPFILES_PATH)),
    ("systemctl", "daemon-reload"),
)
COMMAND_TIMEOUT_S = 60

#: Directories the unit's own settings hide from the service, and the setting.
HIDDEN_FROM_SERVICE = {
    PurePosixPath("/home"): "ProtectHome=yes",
    PurePosixPath("/root"): "ProtectHome=yes",
    PurePosixPath("/run/user"): "ProtectHome=yes",
    # The service gets empty private ones.
    PurePosixPath("/tmp"): "PrivateTmp=yes",
    PurePosixPath("/var/tmp"): "PrivateTmp=yes",
}

NEXT_STEPS = """\
Next steps:
  systemctl enable --now ollamad
  usermod -aG ollamad-clients APPUSER   # for each user whose apps use ollamad (takes effect at next login)
  usermod -aG ollamad-admin OPERATOR   # for each user who may restart Ollama and pull models
  ollamad status
Model pulls need the network, which the unit keeps private to the service:
  ollamad install-systemd --pulling    # the pulling drop-in; read its trade-off"""

#: Where Ollama's own installer or a distribution package puts ollama.service.
OLLAMA_UNIT_PATHS = (PurePosixPath("/etc/systemd/system/ollama.service"),
                     PurePosixPath("/usr/lib/systemd/system/ollama.service"),
                     PurePosixPath("/lib/systemd/system/ollama.service"))
OLLAMA_SERVICE_NOTE = """\
Note: ollama.service exists. Both would serve on 127.0.0.1:11434: either
  systemctl disable --now ollama
or let ollamad watch it (external mode) with `systemctl restart ollama` as its restart command."""


def shipped_text(name: str) -> str:
    """The text of a file in `ollamad/systemd_files/`."""
    return resources.files("ollamad").joinpath("systemd_files", name).read_text(encoding="utf-8")


def unit_text(executable: str) -> str:
    """The shipped unit with ExecStart= running `executable`."""
    if not executable.startswith("/") or any(c.isspace() or c in "\"'\\$;" for c in executable):
        raise ValueError(f"{executable!r} cannot be used in ExecStart= "
                         "(needs an absolute path without spaces, quotes, '$' or ';')")
    text = shipped_text("ollamad.service")
    shipped = f"\nExecStart={SHIPPED_EXECUTABLE} "
    if text.count(shipped) != 1:
        raise RuntimeError(f"shipped unit has no single ExecStart={SHIPPED_EXECUTABLE} line")
    # '%' starts a unit specifier: a literal one is written '%%'.
    return text.replace(shipped, f"\nExecStart={executable.replace('%', '%%')} ")


def example_config_text() -> str:
    from ollamad.config import example_toml
    return example_toml()


def installed_config_text() -> str:
    """The example config with the shipped groups set (:data:`INSTALLED_SETTINGS`)."""
    text = example_config_text()
    for key, value in INSTALLED_SETTINGS.items():
        default = f'\n# {key} = ""\n'
        if text.count(default) != 1:
            raise RuntimeError(f"example config has no single {default.strip()!r} line")
        text = text.replace(default, f'\n{key} = "{value}"\n')
    return text


def hiding_setting(path: PurePosixPath) -> str | None:
    """The unit setting that hides `path` from the service, or None."""
    for hidden, setting in HIDDEN_FROM_SERVICE.items():
        if path == hidden or hidden in path.parents:
            return setting
    return None


def interpreter_of(script: Path) -> Path | None:
    """The resolved interpreter in `script`'s `#!` line, if it has one."""
    try:
        with script.open("rb") as file:
            first_line = file.readline(4096)
    except OSError:
        return None
    if not first_line.startswith(b"#!") or not first_line[2:].split():
        return None
    return Path(os.fsdecode(first_line[2:].split()[0])).resolve()


def unreachable_reason(executable: Path, on_this_system: bool,
                       package: Path | None = None) -> str | None:
    """Why the service could not run `executable`, or None.

    Staged files (`on_this_system` False) run elsewhere: there only a path
    the unit hides is surely wrong. `package` is where the ollamad package
    the executable imports lives, when known (an editable install's source).
    """
    if on_this_system and not executable.exists():
        return f"{executable} does not exist"
    interpreter = interpreter_of(executable) if on_this_system else None
    for what, path in (("the executable", executable), ("its interpreter", interpreter),
                       ("the ollamad package", package)):
        setting = hiding_setting(PurePosixPath(path)) if path is not None else None
        if setting:
            return (f"{what} {path} is below a directory the unit hides ({setting}); "
                    "install ollamad into a virtual environment under /opt, from a Python "
                    "that is not under /home, /root or /tmp either (a venv's python links "
                    "to it), e.g. /usr/bin/python3 -m venv /opt/ollamad")
    return None


def write_file(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` atomically with `mode`, creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def run_command(command: tuple[str, ...]) -> bool:
    """Run one system command, echoing it; True when it succeeded."""
    print("+ " + " ".join(command))
    try:
        completed = subprocess.run(command, timeout=COMMAND_TIMEOUT_S, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    if completed.stdout:
        print(completed.stdout, end="")
    if completed.returncode != 0:
        print(f"error: {command[0]} exited with status {completed.returncode}", file=sys.stderr)
        return False
    return True


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ollamad install-systemd",
        description="Install the ollamad systemd unit, its sysusers.d and tmpfiles.d "
                    "files and an example config. The unit and the two snippets are "
                    "always rewritten (customise with `systemctl edit ollamad`).")
    parser.add_argument("--root", default="/", type=Path,
                        help="stage the files below this directory instead of / "
                             "(then no system command runs)")
    parser.add_argument("--prefix", type=Path,
                        help="virtual environment ollamad is installed in on the target "
                             "(ExecStart= runs PREFIX/bin/ollamad; default: this one)")
    parser.add_argument("--no-reload", action="store_true",
                        help="do not run systemd-sysusers, systemd-tmpfiles and "
                             "systemctl daemon-reload")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing /etc/ollamad/ollamad.toml")
    parser.add_argument("--pulling", action="store_true",
                        help="also install the drop-in a host that pulls models needs "
                             f"({PULLING_PATH}): the service leaves its private network, "
                             "so Ollama's port is on the host's loopback again")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    installing_on_this_system = args.root.resolve() == Path("/")
    executable = (args.prefix / "bin" / "ollamad" if args.prefix
                  else Path(sys.executable).parent / "ollamad")

    if installing_on_this_system and os.geteuid() != 0:
        print("error: installing into / needs root (or stage the files with --root DIR)",
              file=sys.stderr)
        return 1
    # This venv's own package, when it is the one the unit will run.
    package = Path(__file__).resolve().parent if installing_on_this_system and not args.prefix \
        else None
    reason = unreachable_reason(executable, installing_on_this_system, package)
    if reason:
        print(f"error: the service cannot run ollamad: {reason}", file=sys.stderr)
        return 1
    try:
        unit = unit_text(str(executable))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    def target(path: PurePosixPath) -> Path:
        return args.root / path.relative_to("/")

    for name, path in SHIPPED_FILES.items():
        text = unit if path == UNIT_PATH else shipped_text(name)
        write_file(target(path), text, 0o644)
        print(f"wrote {target(path)}")
    config = target(CONFIG_PATH)
    if config.exists() and not args.force:
        print(f"kept existing {config} (--force replaces it)")
    else:
        # 0640: tmpfiles.d then gives it to group ollamad so the daemon can read it.
        write_file(config, installed_config_text(), 0o640)
        print(f"wrote {config}")

    if args.pulling:
        write_file(target(PULLING_PATH), shipped_text("ollamad-pulling.conf"), 0o644)
        print(f"wrote {target(PULLING_PATH)}")
    if installing_on_this_system and not args.no_reload:
        if not all(run_command(command) for command in SYSTEM_COMMANDS):
            return 1
    else:
        print("Then, on the target system, run:")
        for command in SYSTEM_COMMANDS:
            print("  " + " ".join(command))
    print(NEXT_STEPS)
    if any(target(path).exists() for path in OLLAMA_UNIT_PATHS):
        print(OLLAMA_SERVICE_NOTE)
    return 0
