"""deploy/ as shipped: the image's wheel builds from exactly what the Dockerfile copies and
holds every module; the image runs as a non-root user; the systemd units check clean.

No Docker engine runs here, so the Dockerfile's build is replayed: its COPY lines pick the
files, pip builds and installs the wheel from them alone (no network: the venv's
setuptools), and the installed copy, not the checkout, must import and answer --version.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from zipfile import ZipFile

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
PACKAGES = ("workers", "scheduler", "emulator")
pytestmark = pytest.mark.integration


def copied_paths() -> list[str]:
    """The sources of the Dockerfile's COPY lines (the build context is the checkout)."""
    paths: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            paths += words[1:-1]
    return paths


def build_wheel(tmp_path: Path) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    for rel in copied_paths():
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, context / rel,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, context / rel)
    out = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(context)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = out.glob("piapi_bulk-*.whl")
    return wheel


def checkout_modules() -> set[str]:
    return {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def test_the_wheel_builds_from_the_dockerfile_files_and_installs_whole(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with ZipFile(wheel) as zf:
        names = set(zf.namelist())
    modules = {n for n in names if n.endswith(".py")}
    assert modules == checkout_modules(), "the wheel lacks or adds modules"
    assert not any(n.startswith(("tests/", "bench/", "chaos/")) for n in names)

    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300,
        check=False)
    assert done.returncode == 0, done.stderr
    # The installed copy comes first on the path and the checkout is not the cwd, so every
    # import below is served by the wheel (the dependencies come from this venv).
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import importlib, pkgutil, sys\n"
             "for pkg in ('workers', 'scheduler', 'emulator'):\n"
             "    mod = importlib.import_module(pkg)\n"
             "    assert mod.__file__.startswith(sys.argv[1]), mod.__file__\n"
             "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
             "        importlib.import_module(info.name)\n"
             "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", probe, str(site)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    version = subprocess.run([str(site / "bin" / "piapi-bulk"), "--version"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and "piapi-bulk" in version.stdout, version.stderr


def test_the_image_runs_as_a_user_of_its_own() -> None:
    users = [line.split()[1] for line in DOCKERFILE.read_text().splitlines()
             if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, users
    assert re.search(rf"useradd .*\b{users[-1]}\b", DOCKERFILE.read_text())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here")
def test_the_systemd_units_verify_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` on each unit, its ExecStart pointed at this venv's command
    (the units name /opt/piapi-bulk, which this machine does not have)."""
    command = shutil.which("piapi-bulk", path=str(Path(sys.executable).parent))
    assert command is not None
    for unit in UNITS:
        text = unit.read_text().replace("/opt/piapi-bulk/.venv/bin/piapi-bulk", command)
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", *map(str, sorted(tmp_path.iterdir()))],
                          capture_output=True, text=True, timeout=120, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 0 and not problems, problems


def test_every_compose_service_runs_a_command_the_cli_has() -> None:
    """Each `piapi-bulk …` command in docker-compose.yml names a real subcommand and only
    options that subcommand accepts; the databases are health-checked before the fleet
    starts."""
    import yaml
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"healthcheck"} <= services["postgres"].keys()
    command_bin = shutil.which("piapi-bulk", path=str(Path(sys.executable).parent))
    assert command_bin is not None
    checked = 0
    for name, service in services.items():
        command = service.get("command") or []
        if command[:1] != ["piapi-bulk"]:
            continue
        done = subprocess.run([command_bin, command[1], "--help"], capture_output=True,
                              text=True, timeout=60, check=False,
                              env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 0, f"{name}: {done.stderr}"
        for option in (w for w in command[2:] if w.startswith("--")):
            assert option in done.stdout, f"{name}: {command[1]} has no {option}"
        checked += 1
    assert checked >= 5
