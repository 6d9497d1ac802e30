"""contrib/systemd/sipws.service: hardened, valid for systemd, and its ExecStart
uses options the real command line accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipws.tap import Options
from tests.conftest import require_peer
from tests.integration.example_files import CONTRIB, REPO

UNIT = CONTRIB / "systemd" / "sipws.service"
#: File descriptors needed for 100,000 WebSocket connections plus SIP sockets and slack.
MIN_NOFILE = 131072
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections → (key, value) pairs in order (keys may repeat, as in systemd)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        assert "=" in line and not line.endswith("\\"), f"unexpected line: {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in parse_unit(UNIT.read_text())["Service"]:
        values.setdefault(key, []).append(value)
    return values


def one(service: dict[str, list[str]], key: str) -> str:
    assert key in service, f"[Service] {key}= missing"
    assert len(service[key]) == 1, f"[Service] {key}= set {len(service[key])} times"
    return service[key][0]


def test_unit_has_the_sections_and_installs_into_multi_user():
    sections = parse_unit(UNIT.read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    assert ("WantedBy", "multi-user.target") in sections["Install"]


def test_runs_as_a_dedicated_unprivileged_user(service):
    if "DynamicUser" in service:
        assert one(service, "DynamicUser") == "yes"
    else:
        assert one(service, "User") == "sipws" and one(service, "Group") == "sipws"


def test_security_settings(service):
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectHome") in ("yes", "read-only", "tmpfs")
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "NoNewPrivileges") == "yes"
    # Ports below 1024 need exactly one capability, and nothing else may be regained.
    assert one(service, "AmbientCapabilities").split() == ["CAP_NET_BIND_SERVICE"]
    assert one(service, "CapabilityBoundingSet").split() == ["CAP_NET_BIND_SERVICE"]
    assert set(one(service, "RestrictAddressFamilies").split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_limits_restart_and_reload(service):
    assert int(one(service, "LimitNOFILE")) >= MIN_NOFILE
    assert one(service, "Restart") == "on-failure"
    # A configuration error (exit 2) is not retried in a loop.
    assert "2" in one(service, "RestartPreventExitStatus").split()
    reload = shlex.split(one(service, "ExecReload"))
    assert Path(reload[0]).name == "kill" and "-HUP" in reload and "$MAINPID" in reload
    assert one(service, "Type") in ("simple", "exec")
    # The unix admin socket of examples/sipws-full.toml lives in the RuntimeDirectory.
    assert one(service, "RuntimeDirectory") == "sipws"
    assert "unix:/run/sipws/" in (REPO / "examples" / "sipws-full.toml").read_text()


def exec_start_arguments(service) -> tuple[str, list[str]]:
    """The program and the sipws options of ExecStart (the `sipws` script or `twistd … sipws`)."""
    argv = shlex.split(one(service, "ExecStart"))
    program = Path(argv[0]).name
    if program == "twistd":
        assert "-n" in argv or "--nodaemon" in argv, "twistd must stay in the foreground under systemd"
        return program, argv[argv.index("sipws") + 1:]
    assert program == "sipws", argv
    return program, argv[1:]


def test_exec_start_options_are_the_real_command_line_options(service, tmp_path):
    program, args = exec_start_arguments(service)
    assert args == ["--config", "/etc/sipws/sipws.toml"], args
    # The same options, parsed by the real option parser (with a config that exists here).
    config = tmp_path / "sipws.toml"
    config.write_text("")
    local_args = list(args)
    local_args[local_args.index("--config") + 1] = str(config)
    options = Options()
    options.parseOptions(local_args)
    assert options["config"] == str(config)
    # The `sipws` console script takes the same options (python -m sipws is the same entry).
    result = subprocess.run([sys.executable, "-m", "sipws", "--help"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"--config" in result.stdout


def test_systemd_analyze_verify(tmp_path):
    """`systemd-analyze verify` in a scratch root holding the unit, the system units it
    refers to and stand-ins for the programs it runs (it checks they are executable)."""
    analyze = require_peer("systemd-analyze", "Debian package systemd")
    assert SYSTEM_UNITS.is_dir(), f"{SYSTEM_UNITS} missing: is the Debian package systemd complete?"
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/sipws.service")
    service = {}
    for key, value in parse_unit(UNIT.read_text())["Service"]:
        service.setdefault(key, []).append(value)
    for key in ("ExecStart", "ExecReload"):
        program = shlex.split(one(service, key))[0]
        stand_in = root / program.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    result = subprocess.run([analyze, "verify", f"--root={root}", "sipws.service"], capture_output=True,
                            timeout=60)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, output
    # Unknown keys and unparsable values are only warnings for systemd: none allowed.
    assert output.strip() == "", output
