"""The deployment files name only what exists (no Docker engine or systemd here: they are read).

deploy/Dockerfile, deploy/docker-compose.yml, deploy/systemd/* and the
install and run scripts are parsed; every file they copy or mount must be
in the checkout, every ``DICOM_NODE_*`` variable must be a setting the node
accepts, and every ``dicom-node`` command line must parse with the real CLI.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import build_parser
from dicom_node.settings import Settings, load_settings
from tests.orthanc import DEPLOY as ORTHANC_DEPLOY

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
#: Subcommands a deployment file may name before their branch is merged.
PENDING_COMMANDS = {"worker": "dicom-node worker, issue 15 (PostgreSQL job leases)"}


def _commands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(actions[0].choices)  # type: ignore[attr-defined]


def _check_command_line(args: list[str]) -> None:
    """A ``dicom-node`` argument list parses with the real CLI (or names a pending command)."""
    if args[0] not in _commands():
        assert args[0] in PENDING_COMMANDS, f"dicom-node has no command {args[0]!r}"
        return
    build_parser().parse_args(args)  # SystemExit on an unknown option


def _check_environment(environment: dict[str, str]) -> None:
    """``DICOM_NODE_*`` variables are settings the node accepts, with valid values."""
    node = {k: v for k, v in environment.items() if k.startswith("DICOM_NODE_")}
    node.pop("DICOM_NODE_CONFIG", None)
    load_settings(ROOT / "config" / "dicom-node.toml", environ=node, check_paths=False)


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_copies_what_exists_runs_as_a_user_and_names_valid_settings() -> None:
    instructions = _dockerfile()
    base = next(rest for keyword, rest in instructions if keyword == "ARG" and "BASE=" in rest)
    assert "cuda" in base and "runtime" in base
    copied = [rest.split()[:-1] for keyword, rest in instructions if keyword == "COPY"]
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, not in the checkout"
    assert (ROOT / "ai" / "weights" / "model.safetensors").exists()  # the weights ride with ai/
    assert any(s == ["ai"] for s in copied)
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    environment: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            environment.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    assert environment["DICOM_NODE_CONFIG"] == "/etc/dicom-node/dicom-node.toml"
    assert any(
        keyword == "COPY"
        and rest.split() == ["config/dicom-node.toml", environment["DICOM_NODE_CONFIG"]]
        for keyword, rest in instructions
    )
    _check_environment(environment)
    exposed = {
        int(p) for keyword, rest in instructions if keyword == "EXPOSE" for p in rest.split()
    }
    assert exposed == {Settings().port, Settings().similarity.port}
    entrypoint = next(rest for keyword, rest in instructions if keyword == "ENTRYPOINT")
    command = next(rest for keyword, rest in instructions if keyword == "CMD")
    assert eval(entrypoint) == ["dicom-node"]  # noqa: S307 - a JSON list in our own file
    _check_command_line(eval(command))  # noqa: S307
    pins = set(re.findall(r"torch==[\d.]+", (DEPLOY / "Dockerfile").read_text()))
    assert pins == set(re.findall(r"torch==[\d.]+", (DEPLOY / "install.sh").read_text()))


def _substituted(value: Any) -> str:
    """A compose value as compose makes it with an empty .env: ``${NAME:-default}`` is the
    default; a required ``${NAME:?...}`` or plain ``${NAME}`` gets a placeholder."""

    def one(match: re.Match[str]) -> str:
        return match.group(3) if match.group(2) == ":-" else "x"

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, str(value))


def test_compose_uses_the_tested_orthanc_configuration_and_valid_node_settings() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"orthanc", "dicom-node", "postgres", "worker-gpu"} <= set(services)
    orthanc = services["orthanc"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in orthanc["volumes"]}
    assert (DEPLOY / "./orthanc").resolve() == ORTHANC_DEPLOY.resolve()
    assert mounts["./orthanc"] == "/etc/orthanc"
    assert orthanc["command"] == ["/etc/orthanc/orthanc.json"]
    # Every ${VARIABLE} without a default in orthanc.json is given to Orthanc.
    needed = set(re.findall(r"\$\{(\w+)\}", (ORTHANC_DEPLOY / "orthanc.json").read_text()))
    assert needed and needed <= set(orthanc["environment"])
    for script in __import__("json").loads((ORTHANC_DEPLOY / "orthanc.json").read_text())[
        "LuaScripts"
    ]:
        assert (ORTHANC_DEPLOY / script).exists()
    for name in ("dicom-node", "worker-gpu"):
        service = services[name]
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (
            DEPLOY / "Dockerfile"
        ).resolve()
        _check_environment({k: _substituted(v) for k, v in service.get("environment", {}).items()})
        _check_command_line(service["command"])
    node = services["dicom-node"]
    ports = {int(p.split(":")[1]) for p in node["ports"]}
    assert ports == {Settings().port, Settings().similarity.port}
    # The node sends its results to the Orthanc of the same file, on its DICOM port.
    destination = node["environment"]["DICOM_NODE_OUTBOX_DESTINATIONS"]
    config = __import__("json").loads((ORTHANC_DEPLOY / "orthanc.json").read_text())
    assert destination == f"{config['DicomAet']}@orthanc:{config['DicomPort']}"
    assert config["DicomModalities"]["dicom-node"]["Port"] == Settings().port


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / name)
    return parser


def test_systemd_units_run_commands_that_parse_with_what_install_creates() -> None:
    install = (DEPLOY / "install.sh").read_text()
    env_file = {}
    for line in (DEPLOY / "systemd" / "backfill.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env_file[key] = value
    for name in ("dicom-node.service", "dicom-node-backfill.service"):
        service = _unit(name)["Service"]
        program, *args = shlex.split(service["ExecStart"])
        assert program == "/opt/dicom-node/.venv/bin/dicom-node"
        expanded = [part for arg in args for part in shlex.split(env_file.get(arg[1:], arg))]
        _check_command_line(expanded)
        assert service["User"] == "dicom-node" and "useradd" in install
        config = service["Environment"].split("=", 1)[1]
        assert config == "/etc/dicom-node/dicom-node.toml" and config in install
        assert (
            service["ReadWritePaths"] == "/var/lib/dicom-node" and "/var/lib/dicom-node" in install
        )
        assert name in install
    backfill = _unit("dicom-node-backfill.service")["Service"]
    assert backfill["EnvironmentFile"] == "/etc/dicom-node/backfill.env"
    assert "deploy/systemd/backfill.env /etc/dicom-node/backfill.env" in install
    assert backfill["SuccessExitStatus"] == "3"  # stopped: the next run goes on
    timer = _unit("dicom-node-backfill.timer")
    assert timer["Timer"]["OnCalendar"] and "dicom-node-backfill.timer" in install


def test_install_and_run_scripts_parse_and_share_the_stamp() -> None:
    for script in ("install.sh", "run-node.sh", "test.sh"):
        subprocess.run(["bash", "-n", str(DEPLOY / script)], check=True)
    stamp = "cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1"
    assert stamp in (DEPLOY / "install.sh").read_text()
    assert stamp in (DEPLOY / "run-node.sh").read_text()
    run = (DEPLOY / "run-node.sh").read_text()
    # installs only through install.sh, and only when the stamp differs: offline otherwise
    assert "pip " not in run and "install.sh" in run
