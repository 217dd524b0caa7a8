"""End to end: the shipped unit under a real, private systemd manager (issue #6).

One systemd manager per module, started as /work/shared/systemd-sandbox.md
prescribes: its own cgroup subtree, new pid/mount/cgroup/uts/ipc namespaces,
a clean environment, `SYSTEMD_UNIT_PATH` naming one private directory (no
trailing colon: the default unit directories would run sysinit.target against
the host, tmpfiles --remove of the real /tmp included), every unit with
`DefaultDependencies=no`, `systemctl` through nsenter, and a teardown that
always runs.

Before systemd starts, its mount namespace gets private tmpfs mounts on /run,
/tmp, /var/tmp and /var/lib, so that systemd's own state, the unit's
RuntimeDirectory=, StateDirectory= and PrivateTmp= directories never touch the
host's disk; and /etc/passwd and /etc/group are bind-mounted copies to which
`systemd-sysusers --root` added the shipped sysusers.d entries, so the unit
runs as `User=ollamad` exactly as shipped without an account on the host.
The test process reaches the namespace's files (the ZeroMQ socket included)
through /proc/<manager pid>/root.

Run it alone with `python -m pytest tests/systemd -m systemd`; it skips with
the reason when not root, when the namespaces or cgroups cannot be set up, or
when systemd or a system Python matching this one is missing.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import site
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import psutil
import pytest

import ollamad
import ollamad_client
from ollamad import install
from ollamad.testing.registry import RegistryProcess
from ollamad_client import Client

# The whole module takes about 6 s; the limit is per test, set-up included.
pytestmark = [pytest.mark.systemd, pytest.mark.timeout(60)]

SYSTEMD = Path("/lib/systemd/systemd")
#: The unit runs as User=ollamad, which cannot execute the test's Python when
#: it lives under /root (mode 0700; also hidden by ProtectHome=): the unit
#: runs the system interpreter with this package and its dependencies on
#: PYTHONPATH. Same major.minor as ours, so compiled extensions (pyzmq,
#: psutil) load.
SYSTEM_PYTHON = Path("/usr/bin/python3")
UNIT = "ollamad.service"
TARGET = "ollamad-e2e.target"
#: Inside the manager's mount namespace: the test's work directory, bind-mounted.
NS_WORK = "/run/ollamad-e2e"
#: Inside the manager's mount namespace: one read-only bind per PYTHONPATH entry.
NS_PYTHON = "/run/ollamad-e2e-python"
SOCKET_PATH = "/run/ollamad/ollamad.sock"
WATCHDOG_SEC = 3
#: Every external command gets a time limit.
COMMAND_TIMEOUT_S = 30
MANAGER_START_TIMEOUT_S = 15
#: From `systemctl start` to Ollama RUNNING.
READY_TIMEOUT_S = 20
#: SIGSTOP to a restarted, ready daemon: watchdog (3 s) + RestartSec + start-up.
WATCHDOG_RESTART_TIMEOUT_S = 25
TEARDOWN_TIMEOUT_S = 10
#: Plain output, no pager, no colours; nothing inherited that redirects systemd.
TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER": "cat",
            "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"}

#: Throw-away accounts added to the sandbox's passwd/group overlay, each a kind
#: of local user: an app user, an operator, and someone in neither group.
MEMBER, ADMIN, OUTSIDER = "e2e-member", "e2e-admin", "e2e-outsider"
TEST_SYSUSERS = f"""\
u {MEMBER} -
m {MEMBER} ollamad-clients
u {ADMIN} -
m {ADMIN} ollamad-clients
m {ADMIN} ollamad-admin
u {OUTSIDER} -
"""

#: Keeps a test fast: short probes and back-offs. Same keys as tests/daemon;
#: the groups as `ollamad install-systemd` writes them.
CONFIG_TOML = f"""\
socket = "ipc://{SOCKET_PATH}"
{"".join(f'{key} = "{value}"{chr(10)}' for key, value in install.INSTALLED_SETTINGS.items())}\
shutdown_grace = 3.0
backoff_initial = 0.05
backoff_max = 0.2
attempt_timeout = 5.0

[ollama]
stand_in = true
url = "http://127.0.0.1:0"
probe_interval = 0.5
startup_timeout = 15.0
stop_grace = 3.0
restart_backoff_initial = 0.2

[gpu]
poll_interval = 1.0
"""

T = TypeVar("T")


def wait_for(what: str, condition: Callable[[], T], timeout: float,
             diagnostics: Callable[[], str] = lambda: "") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` s.

    Exceptions count as "not yet" (the daemon may be restarting); the last one
    is part of the failure message.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = condition()
            if value:
                return value
            last = value
        except Exception as exc:  # noqa: BLE001 - reported if it never settles
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last: {last!r}\n{diagnostics()}")
        time.sleep(0.05)


def run(command: list[str], timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=TOOL_ENV, stdin=subprocess.DEVNULL)


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


# -- the unit and its files ---------------------------------------------------

def python_path() -> list[str]:
    """Where the unit's interpreter finds ollamad, ollamad_client and the dependencies."""
    entries = [Path(ollamad.__file__).resolve().parents[1],
               Path(ollamad_client.__file__).resolve().parents[1],
               *(Path(p).resolve() for p in site.getsitepackages())]
    unique: list[str] = []
    for entry in entries:
        if entry.is_dir() and str(entry) not in unique:
            unique.append(str(entry))
    return unique


def sandbox_unit(shipped: str, pythonpath: str) -> str:
    """The shipped unit with what this sandbox needs; every other line as shipped.

    No directive is removed: User=/Group=/SupplementaryGroups= (thanks to the
    passwd/group overlay), RuntimeDirectory=, StateDirectory=, PrivateTmp=,
    DevicePolicy=, IPAddressDeny=, SystemCallFilter= and the rest of the
    hardening all work in the sandbox.
    """
    overrides = {
        # The system interpreter (see SYSTEM_PYTHON) and the test's config.
        "ExecStart": f"{SYSTEM_PYTHON} -m ollamad serve --stand-in --config {NS_WORK}/ollamad.toml",
        # Short enough for a test that waits for a watchdog restart.
        "WatchdogSec": f"{WATCHDOG_SEC}s",
        "RestartSec": "200ms",
    }
    additions = [
        f"Environment=PYTHONPATH={pythonpath}",
        "Environment=PYTHONDONTWRITEBYTECODE=1",
        "Environment=OLLAMAD_STANDIN_TOKEN_DELAY=0 OLLAMAD_STANDIN_LOAD_TIME=0",
        # No journald here: the daemon's log goes to a file the test reads.
        f"StandardOutput=append:{NS_WORK}/daemon.log",
        "StandardError=inherit",
        # The watchdog kills with SIGABRT; the host's core_pattern (a file in
        # the cwd, or a pipe to a host helper) has no business with it.
        "LimitCORE=0",
    ]
    out: list[str] = []
    used: set[str] = set()
    for line in shipped.splitlines():
        key = line.split("=", 1)[0]
        if "=" in line and key in overrides:
            assert key not in used, f"{key}= appears twice in the shipped unit"
            used.add(key)
            line = f"{key}={overrides[key]}"
        out.append(line)
        if line == "[Unit]":
            out.append("DefaultDependencies=no")
        elif line == "[Service]":
            out.extend(additions)
    assert used == set(overrides), f"shipped unit lacks {set(overrides) - used}"
    return "\n".join(out) + "\n"


# -- the private systemd manager ---------------------------------------------

def cgroup_hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's cgroup relative to it) for each hierarchy under /sys/fs/cgroup."""
    own: list[tuple[frozenset[str] | None, str]] = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        own.append((None if number == "0" else frozenset(controllers.split(",")), path))
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        fields, (fstype, _source, options) = left.split(), right.split()[:3]
        root, mount_point = fields[3], fields[4]
        if not mount_point.startswith("/sys/fs/cgroup/") and mount_point != "/sys/fs/cgroup":
            continue
        if fstype not in ("cgroup", "cgroup2"):
            continue
        for key, path in own:
            if (key is None) != (fstype == "cgroup2"):
                continue
            if key is not None and not key <= set(options.split(",")):
                continue
            if root != "/" and not (path == root or path.startswith(root + "/")):
                continue
            relative = path[len(root):] if root != "/" else path
            found.append((Path(mount_point), relative.strip("/")))
            break
    return found


class CgroupSubtree:
    """A dedicated cgroup in every hierarchy, below this process's own cgroup."""

    def __init__(self) -> None:
        self.name = f"ollamad-e2e-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.directories: list[Path] = []

    def create(self) -> None:
        hierarchies = cgroup_hierarchies()
        if not hierarchies:
            raise OSError("no cgroup hierarchy is mounted under /sys/fs/cgroup")
        for mount_point, relative in hierarchies:
            parent = mount_point / relative
            sweep_stale(parent)
            directory = parent / self.name
            directory.mkdir()
            self.directories.append(directory)
            # cgroup v1 cpuset: a new cgroup has no CPUs or memory nodes, so
            # nothing could be moved into it before these are copied.
            for name in ("cpuset.cpus", "cpuset.mems", "cpus", "mems"):
                if (directory / name).exists() and not (directory / name).read_text().strip():
                    (directory / name).write_text((parent / name).read_text())

    @property
    def procs_files(self) -> list[str]:
        return [str(directory / "cgroup.procs") for directory in self.directories]

    def pids(self) -> set[int]:
        """Every process left anywhere in the subtree (host pids)."""
        pids: set[int] = set()
        for directory in self.directories:
            for procs in directory.rglob("cgroup.procs"):
                try:
                    pids.update(int(pid) for pid in procs.read_text().split())
                except OSError:
                    pass
        return pids

    def remove(self) -> None:
        """Kill what is left by pid, then rmdir depth-first."""
        deadline = time.monotonic() + TEARDOWN_TIMEOUT_S
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for directory in self.directories:
            if not directory.exists():
                continue
            children = sorted((p for p in directory.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True)
            for child in [*children, directory]:
                try:
                    child.rmdir()
                except OSError:
                    # Still busy for a moment after the last process died.
                    wait_for(f"rmdir {child}", lambda c=child: _rmdir(c), TEARDOWN_TIMEOUT_S)


STALE_SUBTREE = re.compile(r"ollamad-e2e-(\d+)-[0-9a-f]{8}")


def sweep_stale(parent: Path) -> None:
    """Remove empty subtrees a killed pytest left behind (its teardown never ran).

    Only cgroups without processes can be removed, so a live run's subtree
    can never go; its pytest is alive anyway.
    """
    for old in parent.glob("ollamad-e2e-*"):
        match = STALE_SUBTREE.fullmatch(old.name)
        if not match or psutil.pid_exists(int(match.group(1))):
            continue
        for directory in sorted((p for p in old.rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True) + [old]:
            try:
                directory.rmdir()
            except OSError:
                pass


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    return True


# The launcher: moves itself into the cgroup subtree, then execs the manager
# in new namespaces with a clean environment. Arguments: the cgroup.procs files.
# Should pytest itself be killed, $E2E_PDEATHSIG (setpriv, where it has
# --pdeathsig) kills unshare with it, and --kill-child then kills systemd,
# pid 1 of the namespace, whose exit kills everything else in it.
OUTER_SCRIPT = """\
for procs in "$@"; do echo $$ > "$procs" || exit 90; done
exec $E2E_PDEATHSIG env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin container=unshare \
    SYSTEMD_UNIT_PATH="$E2E_UNITS" \
    unshare --pid --fork --kill-child --mount-proc --cgroup --uts --ipc --propagation private \
    /bin/sh -c "$E2E_INNER" sh "$E2E_WORK" "$E2E_CONSOLE" $E2E_PYTHONPATH
"""

# Runs as pid 1 of the new namespaces before it becomes systemd. Arguments:
# the work directory, the console terminal, then the directories to bind
# read-only for PYTHONPATH.
INNER_SCRIPT = f"""\
set -e
umount -R /sys/fs/cgroup
work=$1 console=$2
shift 2
mount -t tmpfs -o mode=0755 ollamad-e2e-run /run
mkdir {NS_WORK} {NS_PYTHON}
mount --bind "$work" {NS_WORK}
mount --bind "$work/root/etc/passwd" /etc/passwd
mount --bind "$work/root/etc/group" /etc/group
i=0
for dir in "$@"; do
    mkdir {NS_PYTHON}/$i
    mount --bind "$dir" {NS_PYTHON}/$i
    mount -o remount,bind,ro {NS_PYTHON}/$i
    i=$((i + 1))
done
# systemd as pid 1 logs to /dev/console, which would be the host's, and only
# to a terminal: give it the test's pseudo-terminal instead.
mount --bind "$console" /dev/console
mount -t tmpfs -o mode=1777 ollamad-e2e-tmp /tmp
mount -t tmpfs -o mode=1777 ollamad-e2e-var-tmp /var/tmp
mount -t tmpfs -o mode=0755 ollamad-e2e-var-lib /var/lib
exec {SYSTEMD} --system --unit={TARGET} --log-target=console --log-color=no
"""


class Console:
    """A pseudo-terminal whose output a thread copies into a file.

    systemd, as pid 1 of its namespace, writes its log to /dev/console only
    if that is a terminal; a reader must keep draining it, or pid 1 blocks.
    """

    def __init__(self, path: Path) -> None:
        self.master, self.slave = os.openpty()
        self.terminal = os.ttyname(self.slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._copy, args=(path,), name="e2e-console", daemon=True)
        self._thread.start()

    def _copy(self, path: Path) -> None:
        with open(path, "ab", buffering=0) as out:
            while True:
                ready, _, _ = select.select([self.master], [], [], 0.1)
                if not ready:
                    if self._stop.is_set():   # only once nothing is pending
                        return
                    continue
                try:
                    data = os.read(self.master, 65536)
                except OSError:      # EIO: no writer left
                    return
                out.write(data.replace(b"\r\n", b"\n"))

    def close(self) -> None:
        os.close(self.slave)
        self._stop.set()
        self._thread.join(timeout=TEARDOWN_TIMEOUT_S)
        os.close(self.master)


def pdeathsig_prefix() -> str:
    """`setpriv --pdeathsig KILL` where setpriv has that option (util-linux 2.33+), else nothing."""
    setpriv = shutil.which("setpriv", path=TOOL_ENV["PATH"])
    if setpriv and "--pdeathsig" in run([setpriv, "--help"]).stdout:
        return f"{setpriv} --pdeathsig KILL"
    return ""


class Manager:
    """A private systemd manager; `close()` always leaves nothing behind."""

    def __init__(self, work: Path, pythonpath: list[str]) -> None:
        self.work = work
        self.pythonpath = pythonpath
        #: The launcher's output and systemd's console, copied from a pseudo-terminal.
        self.log_path = work / "console.log"
        self.console: Console | None = None
        #: uid and gid of the unit's user, as systemd-sysusers allocated them.
        self.ids: tuple[int, int] = (-1, -1)
        self.daemon_log = work / "daemon.log"
        self.cgroups = CgroupSubtree()
        self.launcher: subprocess.Popen | None = None
        self.pid: int | None = None

    # -- lifecycle --

    def start(self) -> None:
        env = {**TOOL_ENV, "E2E_UNITS": f"{NS_WORK}/units", "E2E_INNER": INNER_SCRIPT,
               "E2E_WORK": str(self.work), "E2E_PDEATHSIG": pdeathsig_prefix(),
               "E2E_PYTHONPATH": " ".join(self.pythonpath)}
        # OUTER_SCRIPT word-splits E2E_PYTHONPATH; paths with blanks cannot work.
        assert not any(re.search(r"\s", p) for p in self.pythonpath), self.pythonpath
        self.console = Console(self.log_path)
        env["E2E_CONSOLE"] = self.console.terminal
        self.launcher = subprocess.Popen(
            ["/bin/sh", "-c", OUTER_SCRIPT, "sh", *self.cgroups.procs_files],
            env=env, stdin=subprocess.DEVNULL, stdout=self.console.slave, stderr=subprocess.STDOUT,
            start_new_session=True)

        def manager_pid() -> int | None:
            assert self.launcher is not None
            if self.launcher.poll() is not None:
                pytest.fail(f"the manager exited with {self.launcher.returncode}:\n{self.diagnostics()}")
            for child in psutil.Process(self.launcher.pid).children():
                if child.name() == "systemd":
                    return child.pid
            return None

        self.pid = wait_for("the systemd manager process", manager_pid, MANAGER_START_TIMEOUT_S,
                            self.diagnostics)
        wait_for("systemctl to reach the manager",
                 lambda: self.systemctl("show", "-p", "Version", check=False).returncode == 0,
                 MANAGER_START_TIMEOUT_S, self.diagnostics)

    def close(self) -> None:
        try:
            if self.pid is not None and psutil.pid_exists(self.pid):
                # --force: exit at once; pid 1 of the namespace exiting makes
                # the kernel kill everything else in it.
                try:
                    self.systemctl("--force", "exit", check=False, timeout=TEARDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    pass     # killing unshare below kills systemd (--kill-child)
            if self.launcher is not None:
                try:
                    self.launcher.wait(timeout=TEARDOWN_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.launcher.kill()
                    self.launcher.wait(timeout=TEARDOWN_TIMEOUT_S)
        finally:
            try:
                self.cgroups.remove()
            finally:
                if self.console is not None:
                    self.console.close()

    # -- talking to it --

    def systemctl(self, *args: str, check: bool = True,
                  timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        assert self.pid is not None
        result = run(["nsenter", "-t", str(self.pid), "-m", "-p",
                      "systemctl", "--no-pager", "--no-ask-password", *args], timeout=timeout)
        if check:
            assert result.returncode == 0, (
                f"systemctl {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}\n"
                f"{self.diagnostics()}")
        return result

    def show(self, *properties: str, unit: str = UNIT) -> dict[str, str]:
        command = ["show", unit]
        for name in properties:
            command += ["-p", name]
        output = self.systemctl(*command).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """A path inside the manager's mount namespace, as this process reaches it."""
        return Path(f"/proc/{self.pid}/root{inside}")

    def endpoint(self) -> str:
        return f"ipc://{self.path(SOCKET_PATH)}"

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.endpoint(), timeout=timeout)

    def unit_processes(self, unit: str = UNIT) -> dict[int, psutil.Process]:
        """The unit's processes (its cgroup and below), by their pid inside the namespace."""
        control_group = self.show("ControlGroup", unit=unit).get("ControlGroup", "")
        if not control_group:
            return {}
        found: dict[int, psutil.Process] = {}
        for procs in self.unit_cgroup(control_group).rglob("cgroup.procs"):
            try:
                host_pids = [int(pid) for pid in procs.read_text().split()]
            except OSError:
                continue
            for host_pid in host_pids:
                try:
                    process = psutil.Process(host_pid)
                    status = Path(f"/proc/{host_pid}/status").read_text()
                except (psutil.NoSuchProcess, OSError):
                    continue
                ns_pids = re.search(r"^NSpid:\s+(.*)$", status, re.M)
                if ns_pids:
                    found[int(ns_pids.group(1).split()[-1])] = process
        return found

    def unit_cgroup(self, control_group: str) -> Path:
        """The unit's cgroup directory in the hierarchy systemd tracks processes in."""
        base = self.path("/sys/fs/cgroup")
        for candidate in (base, base / "unified", base / "systemd"):
            if (candidate / "cgroup.procs").exists() and (candidate / "init.scope").is_dir():
                return candidate / control_group.lstrip("/")
        raise AssertionError(f"no cgroup hierarchy of systemd under {base}")

    def host_pid(self, ns_pid: int) -> psutil.Process:
        processes = self.unit_processes()
        assert ns_pid in processes, f"pid {ns_pid} is not in {UNIT} ({sorted(processes)})"
        return processes[ns_pid]

    def group_id(self, name: str) -> int:
        """A group's gid in the sandbox's group overlay."""
        for line in (self.work / "root" / "etc" / "group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2])
        raise AssertionError(f"no group {name} in the overlay")

    def as_user(self, user: str, *command: str,
                timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """`command` in the manager's mount namespace (its passwd, group and /run), as
        `user` with the groups the overlay gives it, on the host's network."""
        assert self.pid is not None
        pythonpath = ":".join(f"{NS_PYTHON}/{i}" for i in range(len(self.pythonpath)))
        return run(["nsenter", "-t", str(self.pid), "-m", "-p",
                    "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                    "env", f"PYTHONPATH={pythonpath}", "PYTHONDONTWRITEBYTECODE=1",
                    *command], timeout=timeout)

    def ollamad_as(self, user: str, *args: str) -> subprocess.CompletedProcess:
        """The `ollamad` CLI as `user`, against the unit's socket."""
        return self.as_user(user, str(SYSTEM_PYTHON), "-m", "ollamad", *args,
                            "--socket", f"ipc://{SOCKET_PATH}")

    def diagnostics(self) -> str:
        return (f"--- systemd console ---\n{tail(self.log_path)}\n"
                f"--- daemon log ---\n{tail(self.daemon_log)}")


# -- fixtures -----------------------------------------------------------------

def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: starts a private systemd manager"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is missing"
    for tool in ("unshare", "nsenter", "systemd-sysusers", "mount", "umount"):
        if shutil.which(tool, path=TOOL_ENV["PATH"]) is None:
            return f"{tool} is not installed"
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing (the unit's User= cannot run this venv's Python)"
    version = run([str(SYSTEM_PYTHON), "-c", "import sys; print(*sys.version_info[:2])"])
    if version.stdout.split() != [str(n) for n in sys.version_info[:2]]:
        return (f"{SYSTEM_PYTHON} is Python {'.'.join(version.stdout.split())}, this is "
                f"{sys.version_info[0]}.{sys.version_info[1]}: the unit could not load the "
                "compiled dependencies")
    probe = run(["unshare", "--pid", "--fork", "--mount-proc", "--cgroup", "--uts", "--ipc",
                 "--propagation", "private", "/bin/true"])
    if probe.returncode != 0:
        return f"unshare is refused here: {probe.stderr.strip()}"
    return None


def stage(work: Path, python_dirs: int) -> tuple[int, int]:
    """Units, config and the passwd/group overlay, as the manager will see them."""
    work.chmod(0o755)   # the daemon (User=ollamad) reads its config in here
    etc = work / "root" / "etc"
    etc.mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), etc / name)
    sysusers = work / "ollamad.sysusers"
    sysusers.write_text(install.shipped_text("ollamad.sysusers"))
    accounts = work / "e2e-accounts.sysusers"
    accounts.write_text(TEST_SYSUSERS)
    result = run(["systemd-sysusers", f"--root={work / 'root'}", str(sysusers), str(accounts)])
    assert result.returncode == 0, result.stderr
    ids = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    uid, gid = int(ids["ollamad"][2]), int(ids["ollamad"][3])

    # As tmpfiles.d installs it: root:ollamad 0640.
    config = work / "ollamad.toml"
    config.write_text(CONFIG_TOML)
    os.chown(config, 0, gid)
    config.chmod(0o640)

    units = work / "units"
    units.mkdir()
    (units / TARGET).write_text("[Unit]\nDescription=ollamad end-to-end test\nDefaultDependencies=no\n")
    pythonpath = ":".join(f"{NS_PYTHON}/{i}" for i in range(python_dirs))
    (units / UNIT).write_text(sandbox_unit(install.shipped_text("ollamad.service"), pythonpath))
    return uid, gid


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("e2e-systemd")
    sandbox = Manager(work, python_path())
    sandbox.ids = stage(work, len(sandbox.pythonpath))
    try:
        try:
            sandbox.cgroups.create()
        except OSError as exc:
            pytest.skip(f"cannot set up a cgroup subtree: {exc}")
        sandbox.start()
        yield sandbox
    finally:
        sandbox.close()


def ollama_running(manager: Manager) -> dict[str, Any] | None:
    with manager.client(timeout=2.0) as client:
        status = client.status()
    return status if status["ollama"]["state"] == "RUNNING" else None


@pytest.fixture
def service(manager):
    """ollamad started (idempotent) and its Ollama RUNNING."""
    manager.systemctl("reset-failed", UNIT, check=False)
    manager.systemctl("start", UNIT)
    wait_for("Ollama RUNNING", lambda: ollama_running(manager), READY_TIMEOUT_S, manager.diagnostics)
    return manager


# -- the tests ----------------------------------------------------------------

def test_start_reports_ready_status_and_serves(service):
    state = service.show("ActiveState", "SubState", "StatusText", "Type", "NotifyAccess",
                         "WatchdogUSec", "User")
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), service.diagnostics()
    assert (state["Type"], state["NotifyAccess"], state["User"]) == ("notify", "main", "ollamad")
    assert state["WatchdogUSec"] in (f"{WATCHDOG_SEC}s", str(WATCHDOG_SEC * 1_000_000))
    # STATUS= from the daemon: the supervisor state, Ollama's pid, the workers.
    wait_for("StatusText RUNNING",
             lambda: re.match(r"RUNNING: ollama pid \d+, \d+ workers?, \d+ in flight",
                              service.show("StatusText")["StatusText"]),
             READY_TIMEOUT_S, service.diagnostics)

    uid, gid = service.ids
    runtime = service.path("/run/ollamad").stat()
    assert (runtime.st_uid, runtime.st_gid, runtime.st_mode & 0o7777) == (uid, gid, 0o711)
    # The socket belongs to the app users' group, not to the service's own.
    clients_gid = service.group_id("ollamad-clients")
    assert clients_gid != gid
    sock = service.path(SOCKET_PATH).stat()
    assert (sock.st_uid, sock.st_gid, sock.st_mode & 0o7777) == (uid, clients_gid, 0o660)

    main_pid = int(service.show("MainPID")["MainPID"])
    main = service.host_pid(main_pid)
    assert main.uids().real == uid
    # The hardening applied: no capabilities, no new privileges, a seccomp filter.
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{main.pid}/status").read_text().splitlines() if ":" in line)
    assert int(status["CapBnd"], 16) == 0 and int(status["CapEff"], 16) == 0, status
    assert (status["NoNewPrivs"].strip(), status["Seccomp"].strip()) == ("1", "2"), status
    with service.client() as client:
        result = client.generate("hi")
        assert result["text"], result
        assert client.status()["daemon"]["pid"] == main_pid


CONNECT_SCRIPT = """\
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
except OSError as exc:
    sys.exit(f"refused: {exc!r}")
"""


def test_only_the_daemon_reaches_ollamas_port(service):
    with service.client() as client:
        url = client.health()["ollama"]["url"]
        ollama_pid = client.status()["ollama"]["pid"]
    port = url.rsplit(":", 1)[1].rstrip("/")
    ollama = service.host_pid(ollama_pid)
    daemon = service.host_pid(int(service.show("MainPID")["MainPID"]))
    # PrivateNetwork=yes: the daemon and Ollama share a network namespace of
    # their own, whose loopback is not the host's.
    service_net = os.readlink(f"/proc/{ollama.pid}/ns/net")
    assert os.readlink(f"/proc/{daemon.pid}/ns/net") == service_net
    assert os.readlink("/proc/self/ns/net") != service_net
    # There, the port answers ...
    inside = run(["nsenter", "-t", str(ollama.pid), "-n", str(SYSTEM_PYTHON), "-c",
                  CONNECT_SCRIPT, port])
    assert inside.returncode == 0, inside.stderr
    # ... on the host it does not, for a local user in no group, an app user, or root.
    for user in (OUTSIDER, MEMBER):
        outside = service.as_user(user, str(SYSTEM_PYTHON), "-c", CONNECT_SCRIPT, port)
        assert outside.returncode == 1 and "ConnectionRefusedError" in outside.stderr, \
            (user, outside.stdout, outside.stderr)
    assert run([str(SYSTEM_PYTHON), "-c", CONNECT_SCRIPT, port]).returncode == 1


def test_app_users_generate_admins_restart_and_others_are_refused(service):
    member = service.ollamad_as(MEMBER, "generate", "hi", "--timeout", "20")
    assert member.returncode == 0 and member.stdout.strip(), member.stderr
    # Outside ollamad-clients: the socket's mode refuses the connection itself.
    outsider = service.ollamad_as(OUTSIDER, "status", "--timeout", "2")
    assert outsider.returncode == 1, outsider.stdout
    assert "permission denied on" in outsider.stderr and "group 'ollamad-clients'" in outsider.stderr
    # An app user is no admin: the daemon looks the uid's groups up, finds no
    # ollamad-admin, and refuses (ProtectProc=invisible hides its /proc entry anyway).
    before = ollama_running(service)["ollama"]["restarts"]
    refused = service.ollamad_as(MEMBER, "restart", "--timeout", "5")
    assert refused.returncode == 1 and "forbidden" in refused.stderr, refused.stderr
    assert ollama_running(service)["ollama"]["restarts"] == before
    # A supplementary ollamad-admin membership is honoured.
    admin = service.ollamad_as(ADMIN, "restart", "--wait", "--wait-timeout", str(READY_TIMEOUT_S),
                               "--reason", "e2e admin")
    assert admin.returncode == 0, admin.stdout + admin.stderr
    after = wait_for("Ollama RUNNING after the admin's restart", lambda: ollama_running(service),
                     READY_TIMEOUT_S, service.diagnostics)
    assert after["ollama"]["restarts"] == before + 1


def test_pulls_go_through_the_daemon_and_need_the_pulling_drop_in(service):
    drop_in = service.work / "units" / f"{UNIT}.d" / "ollamad-pulling.conf"
    with RegistryProcess(["library/tiny:v1"], listen="127.0.0.1:0") as registry:
        model = f"{registry.address}/library/tiny:v1"
        # The registry is on the host's loopback, which the service's network is not.
        refused = service.ollamad_as(ADMIN, "pull", model, "--insecure", "--timeout", "10")
        assert refused.returncode == 1 and "connection refused" in refused.stderr, \
            refused.stdout + refused.stderr
        assert not registry.requests()
        try:
            drop_in.parent.mkdir(exist_ok=True)
            drop_in.write_text(install.shipped_text("ollamad-pulling.conf"))
            service.systemctl("daemon-reload")
            service.systemctl("restart", UNIT)
            assert service.show("PrivateNetwork")["PrivateNetwork"] == "no"
            wait_for("Ollama RUNNING with the drop-in", lambda: ollama_running(service),
                     READY_TIMEOUT_S, service.diagnostics)
            # App users may not pull; operators may.
            member = service.ollamad_as(MEMBER, "pull", model, "--insecure", "--timeout", "10")
            assert member.returncode == 1 and "forbidden" in member.stderr, member.stderr
            pulled = service.ollamad_as(ADMIN, "pull", model, "--insecure", "--timeout", "10")
            assert pulled.returncode == 0, pulled.stdout + pulled.stderr
            assert "success" in pulled.stdout
            assert any(r["path"].endswith("/manifests/v1") for r in registry.requests())
            models = service.ollamad_as(MEMBER, "models", "--json")
            assert model in models.stdout, models.stdout + models.stderr
        finally:
            drop_in.unlink(missing_ok=True)
            service.systemctl("daemon-reload")
            service.systemctl("restart", UNIT)
    assert service.show("PrivateNetwork")["PrivateNetwork"] == "yes"


def test_a_configuration_error_is_not_restarted(service):
    config = service.work / "ollamad.toml"
    good = config.read_text()
    restarts = int(service.show("NRestarts")["NRestarts"])
    try:
        config.write_text(good + "no_such_key = 1\n")
        service.systemctl("restart", UNIT, check=False)

        def failed() -> dict[str, str] | None:
            state = service.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
            return state if state["ActiveState"] == "failed" else None

        state = wait_for("the unit to fail on its config", failed, READY_TIMEOUT_S,
                         service.diagnostics)
        # RestartPreventExitStatus=78: exit 78 (EX_CONFIG) is final, not a restart loop.
        assert (state["Result"], state["ExecMainStatus"]) == ("exit-code", "78"), state
        assert int(state["NRestarts"]) == restarts
        assert "no_such_key: unknown key" in service.daemon_log.read_text()
    finally:
        config.write_text(good)
        service.systemctl("reset-failed", UNIT, check=False)


def test_kill_9_of_ollama_is_restarted_by_the_daemon(service):
    before = ollama_running(service)
    old_pid, old_restarts = before["ollama"]["pid"], before["ollama"]["restarts"]
    main_pid = service.show("MainPID")["MainPID"]
    ollama = service.host_pid(old_pid)
    ollama.kill()

    def restarted() -> dict[str, Any] | None:
        status = ollama_running(service)
        if status and status["ollama"]["pid"] != old_pid and status["ollama"]["restarts"] > old_restarts:
            return status
        return None

    after = wait_for("the daemon to restart Ollama", restarted, READY_TIMEOUT_S, service.diagnostics)
    assert after["ollama"]["restarts"] >= 1
    assert not ollama.is_running()
    state = service.show("ActiveState", "MainPID", "NRestarts")
    assert (state["ActiveState"], state["MainPID"]) == ("active", main_pid), service.diagnostics()
    with service.client() as client:
        assert client.generate("hi")["text"]


def test_a_stopped_daemon_is_restarted_by_the_watchdog(service):
    state = service.show("MainPID", "NRestarts")
    old_main, old_restarts = int(state["MainPID"]), int(state["NRestarts"])
    processes = service.unit_processes()
    daemon = processes[old_main]
    # The I/O loop stops, so do the WATCHDOG=1 pings. No SIGCONT: systemd
    # sends SIGABRT and SIGCONT itself, then SIGKILL to what is left.
    daemon.suspend()

    def restarted() -> dict[str, str] | None:
        now = service.show("ActiveState", "MainPID", "NRestarts")
        if (now["ActiveState"] == "active" and now["MainPID"] not in ("0", str(old_main))
                and int(now["NRestarts"]) > old_restarts):
            return now
        return None

    now = wait_for("systemd's watchdog to restart ollamad", restarted,
                   WATCHDOG_RESTART_TIMEOUT_S, service.diagnostics)
    assert int(now["NRestarts"]) >= 1
    # It was the watchdog (the console is copied by a thread: allow it a moment).
    wait_for("systemd to log the watchdog timeout",
             lambda: f"{UNIT}: Watchdog timeout" in service.log_path.read_text(),
             TEARDOWN_TIMEOUT_S, service.diagnostics)
    wait_for("Ollama RUNNING after the restart", lambda: ollama_running(service),
             READY_TIMEOUT_S, service.diagnostics)
    # The old daemon and its Ollama are gone, not merely left behind.
    wait_for("the old processes to be gone",
             lambda: not any(p.is_running() for p in processes.values()), TEARDOWN_TIMEOUT_S,
             service.diagnostics)
    with service.client() as client:
        status = client.status()
        assert status["daemon"]["pid"] == int(now["MainPID"])
        assert client.generate("hi")["text"]


def test_reload_rereads_the_config(service):
    main_pid = service.show("MainPID")["MainPID"]
    reloads = service.daemon_log.read_text().count("reloaded the configuration")
    service.systemctl("reload", UNIT)
    wait_for("the daemon to log the reload",
             lambda: service.daemon_log.read_text().count("reloaded the configuration") > reloads,
             READY_TIMEOUT_S, service.diagnostics)
    state = service.show("ActiveState", "SubState", "MainPID")
    assert state == {"ActiveState": "active", "SubState": "running", "MainPID": main_pid}
    wait_for("systemd to log the reload", lambda: f"Reloaded {UNIT}" in service.log_path.read_text(),
             TEARDOWN_TIMEOUT_S, service.diagnostics)
    with service.client() as client:
        assert client.generate("hi")["text"]


def test_stop_leaves_no_process_behind(service):
    processes = service.unit_processes()
    assert len(processes) >= 2, processes          # the daemon and its Ollama at least
    control_group = service.unit_cgroup(service.show("ControlGroup")["ControlGroup"])
    stops = service.daemon_log.read_text().count("ollamad stopped")
    service.systemctl("stop", UNIT)
    state = service.show("ActiveState", "Result", "MainPID")
    assert state == {"ActiveState": "inactive", "Result": "success", "MainPID": "0"}, \
        service.diagnostics()
    assert not any(p.is_running() for p in processes.values()), processes
    # systemd removes an empty unit cgroup; either way no process is in it.
    assert not control_group.exists() or not (control_group / "cgroup.procs").read_text().split()
    # A clean exit: the daemon drained and stopped Ollama itself.
    assert service.daemon_log.read_text().count("ollamad stopped") == stops + 1, service.diagnostics()
