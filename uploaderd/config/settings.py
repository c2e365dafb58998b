"""The daemon config (``uploaderd.yaml``) and job files (``jobs.d/*.yaml``) as typed records.

Everything is validated here, at the edge, so the rest of the daemon trusts these records.
Errors name the file, the line and the key, and all of a file's problems are reported at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from uploaderd.config.jobpolicy import (
    INSECURE_JOB_FILES_ENV,
    JobPolicy,
    bucket_refusal,
    outside_allowed_roots,
    unsafe_file_problems,
)
from uploaderd.config.yamlfields import Fields, YamlDocument
from uploaderd.errors import ConfigError, ConfigProblem, KeyTemplateError
from uploaderd.policy.filters import DEFAULT_EXCLUDE, PathFilter, check_pattern
from uploaderd.policy.keys import KeyTemplate
from uploaderd.policy.retry import Backoff, RetryPolicy
from uploaderd.policy.units import format_duration, parse_duration, parse_size
from uploaderd.policy.windows import Window

DEFAULT_CONFIG_PATH = Path("/etc/uploaderd/uploaderd.yaml")
DEFAULT_JOBS_DIR = Path("/etc/uploaderd/jobs.d")
# Files in flight: enough to keep a remote S3 busy despite the round trip (docs/configuration.md,
# "Workers and the round trip").
DEFAULT_WORKERS = 128
DEFAULT_DSN = "postgresql://uploaderd@localhost/uploaderd"
POOL_MODES = ("session", "transaction")  # database.pool_mode: PgBouncer's names
JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# A header value that takes a secret from the environment or a file: ${env:NAME}, ${file:/path}.
SECRET_REFERENCE = re.compile(r"\$\{(env|file):([^}]+)\}")
_SECRET_HEADER = re.compile(r"auth|token|secret|key|cookie|password", re.IGNORECASE)
# Credential files that libpq and boto3 read on their own; the unit points both into
# $CREDENTIALS_DIRECTORY (LoadCredential=). Named here so that a missing one is an error
# that says so, not a silent fall-back to no password or no credentials.
CREDENTIAL_FILE_ENV = {"PGPASSFILE": "pgpass", "AWS_SHARED_CREDENTIALS_FILE": "aws-credentials"}

Checksum = Literal["when_supported", "when_required"]
Overwrite = Literal["never", "if_changed", "always"]


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach S3; the daemon's block is the default for every job."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    checksum: Checksum = "when_supported"
    # Seconds one socket operation may wait (connect; each send, the wait for an answer): a
    # blackholed endpoint ends an attempt after about twice these, not after minutes.
    connect_timeout: float = 5.0
    read_timeout: float = 45.0


DAY = 86400.0


@dataclass(frozen=True)
class Retention:
    """How long finished history stays in the ledger (``ledger.retention``); None: for ever.

    Live work (pending, uploading, failed, unregistered, undisposed, open sessions) never
    leaves, whatever these say.
    """

    versions: float | None = 90 * DAY  # uploaded/superseded versions, sessions, registrations
    attempts: float | None = 30 * DAY  # attempt rows of finished versions, registration calls


@dataclass(frozen=True)
class DaemonConfig:
    file: Path | None
    dsn: str
    jobs_dir: Path
    workers: int = DEFAULT_WORKERS
    # Database connections the daemon may hold at once (docs/install.md, "Many hosts").
    connections: int = 2
    # "transaction" behind PgBouncer's transaction pooling: nothing kept in a session.
    pool_mode: Literal["session", "transaction"] = "session"
    metrics_listen: str = "127.0.0.1:9464"  # "" disables the endpoint
    s3: S3Settings = field(default_factory=S3Settings)
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    shutdown_grace: float = 60.0
    job_policy: JobPolicy = field(default_factory=JobPolicy.for_this_process)
    retention: Retention = field(default_factory=Retention)


@dataclass(frozen=True)
class Source:
    paths: tuple[Path, ...]
    recursive: bool = True
    filter: PathFilter = field(default_factory=lambda: PathFilter((), DEFAULT_EXCLUDE))
    settle: float = 10.0
    rescan: float = 900.0
    polling: bool | None = None  # None: decided per root (network filesystems poll)
    follow_symlinks: bool = False
    shared: bool = False


@dataclass(frozen=True)
class Destination:
    bucket: str
    key: KeyTemplate
    s3: S3Settings = field(default_factory=S3Settings)
    storage_class: str | None = None
    sse: str | None = None
    kms_key_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)
    overwrite: Overwrite = "if_changed"
    bandwidth: int | None = None  # bytes per second
    windows: tuple[Window, ...] = ()


@dataclass(frozen=True)
class AfterUpload:
    action: Literal["keep", "delete", "move"] = "keep"
    move_to: Path | None = None
    when: Literal["uploaded", "registered"] = "uploaded"


@dataclass(frozen=True)
class SessionPolicy:
    group_by: Literal["none", "top_dir", "day"] = "none"
    idle: float | None = 600.0
    marker: str | None = None


@dataclass(frozen=True)
class TriggerSpec:
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)  # unresolved ${env:}/${file:}
    on: Literal["session_complete", "file_uploaded"] = "session_complete"
    batch_size: int = 500
    timeout: float = 30.0
    interval: float | None = 60.0
    cron: str | None = None


@dataclass(frozen=True)
class Job:
    name: str
    file: Path | None
    source: Source
    destination: Destination
    enabled: bool = True
    after_upload: AfterUpload = field(default_factory=AfterUpload)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    session: SessionPolicy = field(default_factory=SessionPolicy)
    trigger: TriggerSpec | None = None


@dataclass(frozen=True)
class JobSet:
    """The result of reading ``jobs.d``: the valid jobs, and the problems of the others."""

    jobs: Mapping[str, Job]
    problems: tuple[ConfigProblem, ...]
    broken_files: frozenset[Path]


# --- the daemon config ---------------------------------------------------------------------


def load_daemon_config(
    file: Path | None, *, env: Mapping[str, str], credentials: bool = True
) -> DaemonConfig:
    """Read ``uploaderd.yaml``; a missing default file means built-in defaults.

    ``credentials=False`` leaves out the check that the credential files the environment
    names can be read: `check --reload` runs as the unit's ExecReload=, where systemd 252
    does not mount the LoadCredential= directory (systemd#35227); the running daemon read
    its credentials when it started.
    """
    document = YamlDocument(None, "") if file is None else YamlDocument.read(file)
    config = _daemon_config(document, env)
    problems = [*document.problems, *(_credential_file_problems(env) if credentials else [])]
    if problems:
        raise ConfigError(problems)
    return config


def _daemon_config(document: YamlDocument, env: Mapping[str, str]) -> DaemonConfig:
    root = document.root()
    database = root.section("database")
    dsn = database.string("dsn", DEFAULT_DSN) or DEFAULT_DSN
    if _dsn_has_password(dsn):
        database.problem("dsn", "must not contain a password: use PGPASSFILE or libpq's env")
    connections = database.integer("connections", DaemonConfig.connections, minimum=1)
    pool_mode = database.choice("pool_mode", POOL_MODES, DaemonConfig.pool_mode)
    database.finish()
    dsn = env.get("UPLOADERD_DATABASE_DSN") or dsn
    jobs_dir = root.converted("jobs_dir", _absolute_path, DEFAULT_JOBS_DIR)
    workers = root.integer("workers", DEFAULT_WORKERS, minimum=1)
    metrics = root.section("metrics")
    listen = metrics.converted("listen", _listen_address, DaemonConfig.metrics_listen)
    metrics.finish()
    s3 = _s3_settings(root.section("s3"), S3Settings())
    log = root.section("log")
    level = log.choice("level", ("debug", "info", "warning", "error"), DaemonConfig.log_level)
    log_format = log.choice("format", ("text", "json"), DaemonConfig.log_format)
    log.finish()
    grace = root.converted("shutdown_grace", parse_duration, DaemonConfig.shutdown_grace)
    retention = _retention(root.section("ledger"))
    policy = JobPolicy.for_this_process(
        allow_insecure_files=env.get(INSECURE_JOB_FILES_ENV, "") not in ("", "0"),
        allowed_roots=_allowed_roots(root),
        allowed_buckets=_allowed_buckets(root),
    )
    root.finish()
    return DaemonConfig(
        file=document.file,
        dsn=dsn,
        jobs_dir=jobs_dir,
        workers=workers,
        connections=connections,
        pool_mode=pool_mode,  # type: ignore[arg-type]
        metrics_listen=listen,
        s3=s3,
        log_level=level,
        log_format=log_format,  # type: ignore[arg-type]
        shutdown_grace=grace,
        job_policy=policy,
        retention=retention,
    )


def _retention(ledger: Fields) -> Retention:
    fields = ledger.section("retention")
    default = Retention()
    versions = fields.converted("versions", parse_retention, default.versions)
    attempts = fields.converted("attempts", parse_retention, default.attempts)
    fields.finish()
    ledger.finish()
    if versions is not None and (attempts is None or attempts > versions):
        attempts = versions  # attempts leave with their versions at the latest
    return Retention(versions, attempts)


MIN_RETENTION = 3600.0  # the shortest ledger.retention and prune --older-than accepted


def parse_retention(value: object) -> float | None:
    """A retention period: a duration of at least ``MIN_RETENTION``, or ``forever``."""
    if value is None or value == "forever":
        return None
    seconds = parse_duration(value)
    if seconds < MIN_RETENTION:
        least = format_duration(MIN_RETENTION)
        raise ValueError(f"expected at least {least}, or forever, got {value!r}")
    return seconds


def _allowed_roots(root: Fields) -> tuple[Path, ...] | None:
    if root.value("allowed_roots") is None:
        return None
    allowed: list[Path] = []
    for index, raw in enumerate(root.string_list("allowed_roots", ())):
        path = Path(raw)
        if not path.is_absolute() or ".." in path.parts:
            root.document.problem(
                ("allowed_roots", str(index)), f"{raw!r} is not an absolute path without '..'"
            )
        else:
            allowed.append(Path(os.path.normpath(path)))
    return tuple(allowed)


def _allowed_buckets(root: Fields) -> tuple[str, ...] | None:
    if root.value("allowed_buckets") is None:
        return None
    return root.string_list("allowed_buckets", ())


def _credential_file_problems(env: Mapping[str, str]) -> list[ConfigProblem]:
    """A credential file the environment names but that cannot be read."""
    problems = []
    for name, credential in CREDENTIAL_FILE_ENV.items():
        value = env.get(name)
        if not value:
            continue
        if os.path.isdir(value) or not os.access(value, os.R_OK):
            reason = "does not exist" if not os.path.lexists(value) else "is not a readable file"
            problems.append(
                ConfigProblem(
                    Path(value),
                    None,
                    name,
                    f"the file {name} names {reason}; under systemd check the unit's "
                    f"LoadCredential={credential}:/etc/uploaderd/credentials/{credential} and that "
                    f"file, otherwise fix or unset {name}",
                )
            )
    return problems


def _s3_settings(fields: Fields, defaults: S3Settings, *, finish: bool = True) -> S3Settings:
    endpoint = fields.converted("endpoint_url", _http_url, defaults.endpoint_url)
    settings = S3Settings(
        endpoint_url=endpoint,
        region=fields.string("region", defaults.region),
        profile=fields.string("profile", defaults.profile),
        checksum=fields.choice(  # type: ignore[arg-type]
            "checksum", ("when_supported", "when_required"), defaults.checksum
        ),
        connect_timeout=fields.converted(
            "connect_timeout", parse_duration, defaults.connect_timeout
        ),
        read_timeout=fields.converted("read_timeout", parse_duration, defaults.read_timeout),
    )
    if finish:
        fields.finish()
    return settings


# --- job files -----------------------------------------------------------------------------


def load_jobs(jobs_dir: Path, defaults: S3Settings, policy: JobPolicy | None = None) -> JobSet:
    """Read every ``*.yaml`` in ``jobs_dir``; a broken file never hides the valid ones.

    ``policy`` defaults to the strict one (root and this process's user, no allow-lists);
    the daemon passes ``DaemonConfig.job_policy``.
    """
    policy = JobPolicy.for_this_process() if policy is None else policy
    jobs: dict[str, Job] = {}
    problems: list[ConfigProblem] = []
    broken: set[Path] = set()
    try:
        files = sorted(p for p in jobs_dir.iterdir() if p.suffix == ".yaml" and p.is_file())
    except OSError as exc:
        problem = ConfigProblem(jobs_dir, None, None, f"cannot list the jobs directory: {exc}")
        return JobSet({}, (problem,), frozenset())
    unsafe_dir = unsafe_file_problems(jobs_dir, policy, "the jobs directory")
    if unsafe_dir:
        # Anyone who can write the directory can replace any job file in it: refuse them all
        # (on reload the versions read while it was safe keep running).
        return JobSet({}, tuple(unsafe_dir), frozenset(files))
    for file in files:
        try:
            job = load_job(file, defaults, policy)
        except ConfigError as exc:
            problems.extend(exc.problems)
            broken.add(file)
            continue
        if job.name in jobs:
            other = jobs[job.name].file
            message = f"job {job.name!r} is also defined in {other}"
            problems.append(ConfigProblem(file, None, "name", message))
            broken.add(file)
            continue
        jobs[job.name] = job
    return JobSet(jobs, tuple(problems), frozenset(broken))


def load_job(file: Path, defaults: S3Settings, policy: JobPolicy | None = None) -> Job:
    policy = JobPolicy.for_this_process() if policy is None else policy
    unsafe = unsafe_file_problems(file, policy, "the job file")
    if unsafe:
        raise ConfigError(unsafe)  # not even parsed: its content is not to be trusted
    document = YamlDocument.read(file)
    job = _job(document, file.stem, defaults, policy)
    if document.problems or job is None:
        raise ConfigError(document.problems)
    return job


def parse_job_text(
    text: str, *, name: str, defaults: S3Settings, policy: JobPolicy | None = None
) -> Job:
    """A job from YAML text (tests and ``check`` of a single document)."""
    document = YamlDocument(None, text)
    job = _job(document, name, defaults, policy or JobPolicy())
    if document.problems or job is None:
        raise ConfigError(document.problems)
    return job


def _job(document: YamlDocument, stem: str, defaults: S3Settings, policy: JobPolicy) -> Job | None:
    if document.data is None and document.problems:
        return None  # unreadable or invalid YAML: its one problem says it all
    if document.data is not None and not isinstance(document.data, dict):
        document.root()  # records "expected a mapping"; no "missing key" noise after it
        return None
    root = document.root()
    name = root.string("name", stem) or stem
    if not JOB_NAME.match(name):
        root.problem("name", f"{name!r} is not a valid job name: use [a-z0-9][a-z0-9_-]*")
    enabled = root.boolean("enabled", Job.enabled)
    source = _source(root.section("source"), policy)
    destination = _destination(root.section("destination"), defaults, policy)
    after_upload = _after_upload(root, policy)
    retry = _retry(root.section("retry"))
    session = _session(root.section("session"))
    trigger = _trigger(root.section("trigger")) if root.has("trigger") else None
    root.value("trigger")
    root.finish()
    if source is None or destination is None:
        return None
    _check_after_upload(root, after_upload, source, trigger)
    return Job(
        name, document.file, source, destination, enabled, after_upload, retry, session, trigger
    )


def _source(fields: Fields, policy: JobPolicy) -> Source | None:
    raw_paths = fields.string_list("paths", ())
    if not raw_paths and fields.data.get("paths") in (None, []):  # else: already a type problem
        fields.problem("paths", "is required: a list of absolute directories to watch")
    paths: list[Path] = []
    for index, raw in enumerate(raw_paths):
        path = Path(raw)
        if not path.is_absolute():
            fields.document.problem(
                (*fields.path_of("paths"), str(index)), f"{raw!r} is not an absolute path"
            )
        elif ".." in path.parts:
            fields.document.problem(
                (*fields.path_of("paths"), str(index)), f"{raw!r} must not contain '..'"
            )
        else:
            path = Path(os.path.normpath(path))
            outside = outside_allowed_roots(path, policy)
            if outside:
                fields.document.problem((*fields.path_of("paths"), str(index)), outside)
            paths.append(path)
    include = _patterns(fields, "include", ())
    exclude = _patterns(fields, "exclude", DEFAULT_EXCLUDE)
    polling_raw = fields.value("polling", "auto")
    if polling_raw not in ("auto", True, False):
        fields.problem("polling", f"expected auto, true or false, got {polling_raw!r}")
        polling_raw = "auto"
    source = Source(
        paths=tuple(paths),
        recursive=fields.boolean("recursive", Source.recursive),
        filter=PathFilter(include, exclude),
        settle=fields.converted("settle", parse_duration, Source.settle),
        rescan=fields.converted("rescan", _positive_duration, Source.rescan),
        polling=None if polling_raw == "auto" else bool(polling_raw),
        follow_symlinks=fields.boolean("follow_symlinks", Source.follow_symlinks),
        shared=fields.boolean("shared", Source.shared),
    )
    fields.finish()
    return source if paths else None


def _patterns(fields: Fields, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    patterns = fields.string_list(key, default)
    for index, pattern in enumerate(patterns):
        try:
            check_pattern(pattern)
        except ValueError as exc:
            fields.document.problem((*fields.path_of(key), str(index)), str(exc))
    return patterns


def _destination(fields: Fields, defaults: S3Settings, policy: JobPolicy) -> Destination | None:
    if not fields.data:
        fields.document.problem(fields.path, "is required: at least a bucket")
    bucket = fields.string("bucket", required=True)
    if bucket and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        fields.problem("bucket", f"{bucket!r} is not a valid S3 bucket name")
    refused = bucket_refusal(bucket, policy) if bucket else None
    if refused:
        fields.problem("bucket", refused)
    key = fields.converted("key", _key_template, None)
    if key is None and not fields.has("key"):
        key = KeyTemplate.parse("${job}/${relpath}")
    sse = fields.value("sse")
    if sse not in (None, "AES256", "aws:kms"):
        fields.problem("sse", f"expected AES256 or aws:kms, got {sse!r}")
    kms_key_id = fields.string("kms_key_id")
    if kms_key_id and sse != "aws:kms":
        fields.problem("kms_key_id", "only applies with sse: aws:kms")
    destination = Destination(
        bucket=bucket or "",
        key=key or KeyTemplate.parse("${relpath}"),
        s3=_s3_settings(fields, defaults, finish=False),
        storage_class=fields.string("storage_class"),
        sse=sse if isinstance(sse, str) else None,
        kms_key_id=kms_key_id,
        tags=fields.string_map("tags"),
        metadata=_metadata(fields),
        overwrite=fields.choice(  # type: ignore[arg-type]
            "overwrite", ("never", "if_changed", "always"), Destination.overwrite
        ),
        bandwidth=fields.converted("bandwidth", _positive_size, None),
        windows=_windows(fields),
    )
    fields.finish()
    return destination if bucket and key else None


def _metadata(fields: Fields) -> dict[str, str]:
    metadata = fields.string_map("metadata")
    for name in metadata:
        if name.lower() == "sha256":
            fields.document.problem(
                (*fields.path_of("metadata"), name), "sha256 is set by uploaderd itself"
            )
        elif not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            fields.document.problem(
                (*fields.path_of("metadata"), name),
                "metadata names are letters, digits, '-' and '_'",
            )
    return metadata


def _windows(fields: Fields) -> tuple[Window, ...]:
    windows: list[Window] = []
    for index, text in enumerate(fields.string_list("windows", ())):
        try:
            windows.append(Window.parse(text))
        except ValueError as exc:
            fields.document.problem((*fields.path_of("windows"), str(index)), str(exc))
    return tuple(windows)


def _after_upload(root: Fields, policy: JobPolicy) -> AfterUpload:
    raw = root.value("after_upload", "keep")
    when = root.choice("after_upload_when", ("uploaded", "registered"), AfterUpload.when)
    if raw in ("keep", "delete"):
        return AfterUpload(raw, None, when)  # type: ignore[arg-type]
    if isinstance(raw, dict) and set(raw) == {"move_to"}:
        target = root.section("after_upload").converted("move_to", _absolute_path, None)
        if target is not None:
            outside = outside_allowed_roots(Path(os.path.normpath(target)), policy)
            if outside:
                root.document.problem(("after_upload", "move_to"), outside)
            return AfterUpload("move", target, when)  # type: ignore[arg-type]
        return AfterUpload("keep", None, when)  # type: ignore[arg-type]
    root.problem("after_upload", f"expected keep, delete or {{move_to: /dir}}, got {raw!r}")
    return AfterUpload()


def _check_after_upload(
    root: Fields, after_upload: AfterUpload, source: Source, trigger: TriggerSpec | None
) -> None:
    """Rules across sections: what after_upload needs from the rest of the job."""
    if after_upload.when == "registered" and trigger is None:
        root.problem("after_upload_when", "registered needs a trigger block to register with")
    target = after_upload.move_to
    if target is not None and any(target == p or p in target.parents for p in source.paths):
        # Moved files would be found again in the root and queued as new versions.
        root.document.problem(
            ("after_upload", "move_to"), f"{target} is inside a watched root; move files out of it"
        )


def _retry(fields: Fields) -> RetryPolicy:
    max_attempts = fields.integer("max_attempts", RetryPolicy.max_attempts, minimum=1)
    backoff = fields.section("backoff")
    policy = RetryPolicy(
        max_attempts,
        Backoff(
            initial=backoff.converted("initial", parse_duration, Backoff.initial),
            max=backoff.converted("max", parse_duration, Backoff.max),
            multiplier=backoff.number("multiplier", Backoff.multiplier, minimum=1.0),
            jitter=backoff.boolean("jitter", Backoff.jitter),
        ),
    )
    if policy.backoff.max < policy.backoff.initial:
        backoff.problem("max", "must not be smaller than initial")
    backoff.finish()
    fields.finish()
    return policy


def _session(fields: Fields) -> SessionPolicy:
    group_by = fields.choice("group_by", ("none", "top_dir", "day"), SessionPolicy.group_by)
    complete = fields.section("complete_when")
    idle = complete.converted("idle", _positive_duration, None)
    marker = complete.string("marker")
    if marker is not None and ("/" in marker or marker in {"", ".", ".."}):
        complete.problem("marker", "expected a file name such as RunComplete.txt")
    if idle is None and marker is None:
        idle = SessionPolicy.idle
    complete.finish()
    fields.finish()
    return SessionPolicy(group_by, idle, marker)  # type: ignore[arg-type]


def _trigger(fields: Fields) -> TriggerSpec | None:
    url = fields.converted("url", _http_url, None)
    if url is None and not fields.has("url"):
        fields.problem("url", "is required: the endpoint to call")
    method = fields.choice("method", ("POST", "PUT"), TriggerSpec.method)
    headers = fields.string_map("headers")
    for name, value in headers.items():
        if _SECRET_HEADER.search(name) and not SECRET_REFERENCE.search(value):
            fields.document.problem(
                (*fields.path_of("headers"), name),
                "secrets never live in YAML: use ${env:NAME} or ${file:/path}",
            )
    schedule = fields.section("schedule")
    interval = schedule.converted("interval", _positive_duration, None)
    cron = schedule.string("cron")
    if cron is not None and interval is not None:
        schedule.problem("cron", "give either interval or cron, not both")
    if cron is not None and len(cron.split()) != 5:
        schedule.problem("cron", f"{cron!r} is not a five-field cron expression")
    schedule.finish()
    spec = TriggerSpec(
        url=url or "",
        method=method,
        headers=headers,
        on=fields.choice("on", ("session_complete", "file_uploaded"), TriggerSpec.on),  # type: ignore[arg-type]
        batch_size=fields.integer("batch_size", TriggerSpec.batch_size, minimum=1),
        timeout=fields.converted("timeout", _positive_duration, TriggerSpec.timeout),
        interval=interval if interval is not None or cron is not None else TriggerSpec.interval,
        cron=cron,
    )
    fields.finish()
    return spec if url else None


# --- value converters (each raises ValueError with the message a person reads) ------------------


def _absolute_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected an absolute path, got {value!r}")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} is not an absolute path")
    return path


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def _positive_size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError("must be larger than zero")
    return size


def _http_url(value: Any) -> str | None:
    if value is None:
        return None
    parts = urlsplit(str(value)) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.password:
        raise ValueError("must not contain a password")
    return str(value)


def _listen_address(value: Any) -> str:
    if value in ("", None):
        return ""
    if not isinstance(value, str):
        raise ValueError(f'expected host:port or "" to disable, got {value!r}')
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port such as 127.0.0.1:9464, got {value!r}")
    return value


def _key_template(value: Any) -> KeyTemplate:
    if not isinstance(value, str):
        raise ValueError(f"expected a key template string, got {value!r}")
    try:
        return KeyTemplate.parse(value)
    except KeyTemplateError as exc:
        raise ValueError(str(exc)) from exc


def _dsn_has_password(dsn: str) -> bool:
    if "://" in dsn:
        return bool(urlsplit(dsn).password) or "password=" in dsn.lower()
    return bool(re.search(r"(^|\s)password\s*=", dsn, re.IGNORECASE))
