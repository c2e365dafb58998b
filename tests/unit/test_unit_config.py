"""uploaderd.config: daemon config and job files into typed records, and every problem named."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from uploaderd.config.settings import (
    DEFAULT_DSN,
    DEFAULT_JOBS_DIR,
    DaemonConfig,
    Job,
    S3Settings,
    load_daemon_config,
    load_job,
    load_jobs,
    parse_job_text,
)
from uploaderd.config.yamlfields import YamlDocument
from uploaderd.errors import ConfigError, ConfigProblem
from uploaderd.policy.filters import DEFAULT_EXCLUDE

# A job file with every key set (the s3 overrides given real values), as in docs/configuration.md.
FULL_JOB = """\
name: scope-a
enabled: true
source:
  paths: [/data/scope-a]
  recursive: true
  include: ["**/*.tif", "**/*.json"]
  exclude: ["**/*.tmp", "**/*.part", "**/.*"]
  settle: 10s
  rescan: 15m
  polling: auto
  follow_symlinks: false
  shared: false
destination:
  bucket: lab-raw
  key: "scope-a/${relpath}"
  endpoint_url: http://127.0.0.1:9000
  region: eu-west-1
  profile: lab
  checksum: when_required
  storage_class: STANDARD_IA
  sse: aws:kms
  kms_key_id: arn:aws:kms:eu-west-1:111122223333:key/abc
  tags: {project: x}
  metadata: {instrument: scope-a}
  overwrite: if_changed
  bandwidth: 50MB/s
  windows: ["Mon-Fri 19:00-07:00", "Sat-Sun"]
after_upload: {move_to: /data/done}
after_upload_when: registered
retry:
  max_attempts: 8
  backoff: {initial: 30s, max: 1h, multiplier: 2, jitter: true}
session:
  group_by: top_dir
  complete_when: {marker: RunComplete.txt}
trigger:
  url: https://catalog.example/api/register
  method: POST
  headers: {Authorization: "Bearer ${env:CATALOG_TOKEN}"}
  on: session_complete
  batch_size: 500
  timeout: 30s
  schedule: {interval: 1m}
"""

MINIMAL_JOB = """\
source:
  paths: [/data/in]
destination:
  bucket: lab-raw
"""


def job(text: str, name: str = "job") -> Job:
    return parse_job_text(text, name=name, defaults=S3Settings())


def problems_of(text: str, name: str = "job") -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        job(text, name)
    return caught.value.problems


def only_problem(text: str) -> ConfigProblem:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


def with_destination(extra: str) -> str:
    """MINIMAL_JOB with more lines (indented two spaces) under destination."""
    return MINIMAL_JOB + "".join(f"  {line}\n" for line in extra.splitlines())


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- a valid job -------------------------------------------------------------------------------


def test_full_job_parses_into_typed_values() -> None:
    parsed = job(FULL_JOB, name="ignored-because-name-is-set")

    assert parsed.name == "scope-a"
    assert parsed.enabled is True
    assert parsed.file is None

    source = parsed.source
    assert source.paths == (Path("/data/scope-a"),)
    assert source.recursive is True
    assert source.filter.include == ("**/*.tif", "**/*.json")
    assert source.filter.exclude == ("**/*.tmp", "**/*.part", "**/.*")
    assert source.settle == 10.0
    assert source.rescan == 900.0
    assert source.polling is None  # auto
    assert source.follow_symlinks is False
    assert source.shared is False

    dest = parsed.destination
    assert dest.bucket == "lab-raw"
    assert dest.key.text == "scope-a/${relpath}"
    assert dest.key.parts == ((False, "scope-a/"), (True, "relpath"))
    assert dest.s3 == S3Settings(
        endpoint_url="http://127.0.0.1:9000",
        region="eu-west-1",
        profile="lab",
        checksum="when_required",
    )
    assert dest.storage_class == "STANDARD_IA"
    assert dest.sse == "aws:kms"
    assert dest.kms_key_id == "arn:aws:kms:eu-west-1:111122223333:key/abc"
    assert dict(dest.tags) == {"project": "x"}
    assert dict(dest.metadata) == {"instrument": "scope-a"}
    assert dest.overwrite == "if_changed"
    assert dest.bandwidth == 50_000_000  # bytes per second
    weekday_nights, weekend = dest.windows
    assert weekday_nights.days == frozenset({0, 1, 2, 3, 4})
    assert (weekday_nights.start, weekday_nights.end) == (time(19, 0), time(7, 0))
    assert weekend.days == frozenset({5, 6})

    assert parsed.after_upload.action == "move"
    assert parsed.after_upload.move_to == Path("/data/done")
    assert parsed.after_upload.when == "registered"

    assert parsed.retry.max_attempts == 8
    assert parsed.retry.backoff.initial == 30.0
    assert parsed.retry.backoff.max == 3600.0
    assert parsed.retry.backoff.multiplier == 2.0
    assert parsed.retry.backoff.jitter is True

    assert parsed.session.group_by == "top_dir"
    assert parsed.session.marker == "RunComplete.txt"
    assert parsed.session.idle is None

    trigger = parsed.trigger
    assert trigger is not None
    assert trigger.url == "https://catalog.example/api/register"
    assert trigger.method == "POST"
    # Secret references stay unresolved in the record; they are resolved at call time.
    assert dict(trigger.headers) == {"Authorization": "Bearer ${env:CATALOG_TOKEN}"}
    assert trigger.on == "session_complete"
    assert trigger.batch_size == 500
    assert trigger.timeout == 30.0
    assert trigger.interval == 60.0
    assert trigger.cron is None


def test_minimal_job_gets_the_documented_defaults() -> None:
    parsed = job(MINIMAL_JOB, name="scope-b")

    assert parsed.name == "scope-b"  # the file stem
    assert parsed.enabled is True
    assert parsed.source.recursive is True
    assert parsed.source.filter.include == ()
    assert parsed.source.filter.exclude == DEFAULT_EXCLUDE
    assert parsed.source.settle == 10.0
    assert parsed.source.rescan == 900.0
    assert parsed.source.polling is None
    assert parsed.source.follow_symlinks is False
    assert parsed.source.shared is False
    assert parsed.destination.key.text == "${job}/${relpath}"
    assert parsed.destination.s3 == S3Settings()
    assert parsed.destination.overwrite == "if_changed"
    assert parsed.destination.bandwidth is None
    assert parsed.destination.windows == ()
    assert parsed.destination.sse is None
    assert parsed.after_upload.action == "keep"
    assert parsed.after_upload.when == "uploaded"
    assert parsed.retry.max_attempts == 8
    assert parsed.retry.backoff.initial == 30.0
    assert parsed.retry.backoff.max == 3600.0
    assert parsed.session.group_by == "none"
    assert parsed.session.idle == 600.0
    assert parsed.session.marker is None
    assert parsed.trigger is None


def test_job_inherits_the_daemon_s3_block_and_overrides_parts_of_it() -> None:
    defaults = S3Settings(endpoint_url="http://minio:9000", region="us-east-1", profile="p")
    inherited = parse_job_text(MINIMAL_JOB, name="a", defaults=defaults)
    assert inherited.destination.s3 == defaults

    overridden = parse_job_text(
        with_destination("region: eu-central-1"), name="a", defaults=defaults
    )
    assert overridden.destination.s3 == S3Settings(
        endpoint_url="http://minio:9000", region="eu-central-1", profile="p"
    )


@pytest.mark.parametrize(("value", "action"), [("keep", "keep"), ("delete", "delete")])
def test_after_upload_keep_and_delete(value: str, action: str) -> None:
    parsed = job(MINIMAL_JOB + f"after_upload: {value}\n")
    assert parsed.after_upload.action == action
    assert parsed.after_upload.move_to is None


def test_polling_true_false_and_idle_session_and_cron_trigger() -> None:
    parsed = job(
        "source:\n  paths: [/data/in]\n  polling: true\n"
        "destination: {bucket: lab-raw}\n"
        "session:\n  group_by: day\n  complete_when: {idle: 5m}\n"
        "trigger:\n  url: http://lims.local/hook\n  on: file_uploaded\n"
        "  schedule: {cron: '*/5 * * * *'}\n"
    )
    assert parsed.source.polling is True
    assert parsed.session.group_by == "day"
    assert parsed.session.idle == 300.0
    assert parsed.trigger is not None
    assert parsed.trigger.on == "file_uploaded"
    assert parsed.trigger.cron == "*/5 * * * *"
    assert (
        job(MINIMAL_JOB.replace("/data/in]", "/data/in]\n  polling: false")).source.polling is False
    )


def test_source_paths_are_normalised() -> None:
    parsed = job(MINIMAL_JOB.replace("[/data/in]", "[/data//in/./x/]"))
    assert parsed.source.paths == (Path("/data/in/x"),)


def test_load_job_names_the_job_after_the_file_and_records_it(tmp_path: Path) -> None:
    file = write(tmp_path / "scope-c.yaml", MINIMAL_JOB)
    loaded = load_job(file, S3Settings())
    assert loaded.name == "scope-c"
    assert loaded.file == file


# --- the daemon config -------------------------------------------------------------------------


def test_daemon_config_defaults_without_a_file() -> None:
    config = load_daemon_config(None, env={})
    assert config == DaemonConfig(file=None, dsn=DEFAULT_DSN, jobs_dir=DEFAULT_JOBS_DIR)
    assert config.workers == 128
    assert config.metrics_listen == "127.0.0.1:9464"
    assert config.shutdown_grace == 60.0
    assert config.log_level == "info"
    assert config.log_format == "text"


def test_daemon_config_every_key(tmp_path: Path) -> None:
    file = write(
        tmp_path / "uploaderd.yaml",
        """\
database:
  dsn: postgresql://uploaderd@db.local/uploaderd
  connections: 1
  pool_mode: transaction
jobs_dir: /srv/jobs.d
workers: 3
metrics:
  listen: ""
s3:
  endpoint_url: http://127.0.0.1:9000
  region: eu-west-1
  profile: lab
  checksum: when_required
log:
  level: debug
  format: json
shutdown_grace: 2m
""",
    )
    config = load_daemon_config(file, env={})
    assert config == DaemonConfig(
        file=file,
        dsn="postgresql://uploaderd@db.local/uploaderd",
        jobs_dir=Path("/srv/jobs.d"),
        workers=3,
        connections=1,
        pool_mode="transaction",
        metrics_listen="",
        s3=S3Settings("http://127.0.0.1:9000", "eu-west-1", "lab", "when_required"),
        log_level="debug",
        log_format="json",
        shutdown_grace=120.0,
    )


def test_env_dsn_overrides_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "uploaderd.yaml", "database:\n  dsn: postgresql://a@file/db\n")
    assert load_daemon_config(file, env={}).dsn == "postgresql://a@file/db"
    env = {"UPLOADERD_DATABASE_DSN": "postgresql://b@env/db"}
    assert load_daemon_config(file, env=env).dsn == "postgresql://b@env/db"
    assert load_daemon_config(None, env=env).dsn == "postgresql://b@env/db"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://uploaderd:hunter2@localhost/uploaderd",
        "postgresql://uploaderd@localhost/uploaderd?password=hunter2",
        "host=localhost dbname=uploaderd password=hunter2",
    ],
)
def test_password_in_dsn_is_refused(tmp_path: Path, dsn: str) -> None:
    file = write(tmp_path / "uploaderd.yaml", f"database:\n  dsn: '{dsn}'\n")
    with pytest.raises(ConfigError) as caught:
        load_daemon_config(file, env={})
    assert caught.value.problems == [
        ConfigProblem(
            file, 2, "database.dsn", "must not contain a password: use PGPASSFILE or libpq's env"
        )
    ]
    assert "hunter2" not in str(caught.value)


def test_daemon_config_reports_every_problem_with_line_and_key(tmp_path: Path) -> None:
    file = write(
        tmp_path / "uploaderd.yaml",
        """\
workers: 0
metrics: {listen: 9464}
jobs_dir: jobs.d
log: {level: loud}
shutdown_grace: soon
wrokers: 2
database: {pool_mode: statement}
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_daemon_config(file, env={})
    found = {(p.line, p.key): p.message for p in caught.value.problems}
    assert all(p.file == file for p in caught.value.problems)
    assert found == {
        (1, "workers"): "must be at least 1, got 0",
        (2, "metrics.listen"): 'expected host:port or "" to disable, got 9464',
        (3, "jobs_dir"): "'jobs.d' is not an absolute path",
        (4, "log.level"): "expected one of debug, info, warning, error, got 'loud'",
        (
            5,
            "shutdown_grace",
        ): "expected a duration such as 30s, 15m, 1h, 1d or a number of seconds, got 'soon'",
        (6, "wrokers"): "unknown key; did you mean 'workers'? (known here: allowed_buckets, "
        "allowed_roots, database, jobs_dir, ledger, log, metrics, s3, "
        "shutdown_grace, workers)",
        (7, "database.pool_mode"): "expected one of session, transaction, got 'statement'",
    }
    # The message a person reads names file, line and key.
    assert f"{file}:1: workers: must be at least 1, got 0" in str(caught.value).splitlines()


def test_daemon_config_bool_where_int_expected(tmp_path: Path) -> None:
    file = write(tmp_path / "uploaderd.yaml", "workers: true\n")
    with pytest.raises(ConfigError) as caught:
        load_daemon_config(file, env={})
    assert caught.value.problems == [
        ConfigProblem(file, 1, "workers", "expected an integer, got a boolean (True)")
    ]


# --- bad job files: each problem names file, line and key -----------------------------------


def test_malformed_yaml_reports_the_line_and_nothing_else(tmp_path: Path) -> None:
    file = write(tmp_path / "bad.yaml", "source:\n  paths: [/data/in]\n bucket: oops\n")
    with pytest.raises(ConfigError) as caught:
        load_job(file, S3Settings())
    [problem] = caught.value.problems
    assert problem.file == file
    assert problem.line == 3
    assert problem.key is None
    assert problem.message.startswith("invalid YAML: ")
    assert str(problem).startswith(f"{file}:3: invalid YAML: ")


def test_unclosed_flow_list_is_invalid_yaml() -> None:
    [problem] = problems_of("source:\n  paths: [/data/in\ndestination: {bucket: lab-raw}\n")
    assert problem.message.startswith("invalid YAML: ")
    assert problem.line is not None


def test_top_level_list_is_one_clear_problem() -> None:
    assert problems_of("- source\n- destination\n") == [
        ConfigProblem(
            None,
            None,
            None,
            "expected a mapping of keys at the top, got a list (['source', 'destination'])",
        )
    ]


def test_empty_job_file_lists_what_is_required(tmp_path: Path) -> None:
    file = write(tmp_path / "empty.yaml", "")
    with pytest.raises(ConfigError) as caught:
        load_job(file, S3Settings())
    assert {(p.key, p.message) for p in caught.value.problems} == {
        ("source.paths", "is required: a list of absolute directories to watch"),
        ("destination", "is required: at least a bucket"),
        ("destination.bucket", "is required (a non-empty string)"),
    }


def test_unknown_key_with_did_you_mean_hint() -> None:
    problem = only_problem(
        "source:\n  paths: [/data/in]\n  recusive: false\ndestination: {bucket: lab-raw}\n"
    )
    assert problem.line == 3
    assert problem.key == "source.recusive"
    assert problem.message == (
        "unknown key; did you mean 'recursive'? (known here: exclude, follow_symlinks, "
        "include, paths, polling, recursive, rescan, settle, shared)"
    )


def test_unknown_top_level_key_without_a_close_match() -> None:
    problem = only_problem(MINIMAL_JOB + "zzz: 1\n")
    assert (problem.line, problem.key) == (5, "zzz")
    assert problem.message.startswith("unknown key (known here: ")


def test_duplicate_key_is_reported_at_its_second_line() -> None:
    problem = only_problem(MINIMAL_JOB + "enabled: true\nenabled: false\n")
    assert (problem.line, problem.key, problem.message) == (6, "enabled", "duplicate key")


def test_duplicate_nested_key() -> None:
    problem = only_problem(
        "source:\n  paths: [/data/in]\n  settle: 1s\n  settle: 2s\ndestination: {bucket: lab-raw}\n"
    )
    assert (problem.line, problem.key, problem.message) == (4, "source.settle", "duplicate key")


def test_trigger_on_key_is_not_a_yaml_boolean() -> None:
    # YAML 1.1 reads a bare `on` as True; a plain `on: file_uploaded` must still work.
    parsed = job(MINIMAL_JOB + "trigger:\n  url: https://x.example/\n  on: file_uploaded\n")
    assert parsed.trigger is not None
    assert parsed.trigger.on == "file_uploaded"


@pytest.mark.parametrize("value", ["yes", "no", "on", "off"])
def test_yaml_11_booleans_are_not_booleans(value: str) -> None:
    problem = only_problem(MINIMAL_JOB + f"enabled: {value}\n")
    assert problem.key == "enabled"
    assert problem.message == f"expected true or false, got a string ('{value}')"


def test_string_where_list_expected() -> None:
    # "/a, /b" would otherwise silently become one path with a comma in it.
    problem = only_problem("source:\n  paths: /data/a, /data/b\ndestination: {bucket: lab-raw}\n")
    assert (problem.line, problem.key) == (2, "source.paths")
    assert problem.message == "expected a list of strings, got a string ('/data/a, /data/b')"


def test_string_where_include_list_expected() -> None:
    problem = only_problem(
        "source:\n  paths: [/data/in]\n  include: '*.tif'\ndestination: {bucket: lab-raw}\n"
    )
    assert (problem.line, problem.key) == (3, "source.include")
    assert problem.message == "expected a list of strings, got a string ('*.tif')"


def test_number_where_list_expected_and_bool_where_int_expected() -> None:
    problems = problems_of(
        "source:\n  paths: [/data/in]\n  include: 5\ndestination: {bucket: lab-raw}\n"
        "retry: {max_attempts: true}\n"
    )
    assert [(p.line, p.key, p.message) for p in problems] == [
        (3, "source.include", "expected a list of strings, got an integer (5)"),
        (5, "retry.max_attempts", "expected an integer, got a boolean (True)"),
    ]


def test_string_where_bool_expected_and_mapping_where_section_expected() -> None:
    problems = problems_of(
        "source:\n  paths: [/data/in]\n  recursive: 'true'\ndestination: {bucket: lab-raw}\n"
        "retry: 3\n"
    )
    assert [(p.line, p.key, p.message) for p in problems] == [
        (3, "source.recursive", "expected true or false, got a string ('true')"),
        (5, "retry", "expected a mapping, got an integer (3)"),
    ]


def test_relative_source_path() -> None:
    problem = only_problem("source:\n  paths: [data/in]\ndestination: {bucket: lab-raw}\n")
    assert (problem.line, problem.key) == (2, "source.paths.0")
    assert problem.message == "'data/in' is not an absolute path"


def test_source_path_with_dotdot() -> None:
    problem = only_problem(
        "source:\n  paths:\n    - /data/in\n    - /data/../etc\ndestination: {bucket: lab-raw}\n"
    )
    assert (problem.line, problem.key) == (4, "source.paths.1")
    assert problem.message == "'/data/../etc' must not contain '..'"


def test_relative_move_to() -> None:
    problem = only_problem(MINIMAL_JOB + "after_upload: {move_to: done}\n")
    assert (problem.line, problem.key) == (5, "after_upload.move_to")
    assert problem.message == "'done' is not an absolute path"


def test_bad_after_upload() -> None:
    problem = only_problem(MINIMAL_JOB + "after_upload: archive\n")
    assert (problem.line, problem.key) == (5, "after_upload")
    assert problem.message == "expected keep, delete or {move_to: /dir}, got 'archive'"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("../${relpath}", "the key '../a/b.txt' has an empty, '.' or '..' segment"),
        ("${relpath}/..", "the key 'a/b.txt/..' has an empty, '.' or '..' segment"),
        ("/abs/${relpath}", "the key '/abs/a/b.txt' has an empty, '.' or '..' segment"),
        ("x//${relpath}", "the key 'x//a/b.txt' has an empty, '.' or '..' segment"),
        (
            "${nope}/${relpath}",
            "unknown variable ${nope}; known: ${dd}, ${dirname}, ${ext}, ${hostname}, ${job}, "
            "${mm}, ${name}, ${relpath}, ${session}, ${stem}, ${yyyy}",
        ),
        (
            "${job}/${yyyy}/latest",
            "the key must contain ${relpath}, ${name} or ${stem}, or every file would "
            "overwrite the same object",
        ),
        ("cost$/${relpath}", "a '$' must start a ${variable} reference"),
        ("$relpath", "a '$' must start a ${variable} reference"),
        ("${relpath", "a '$' must start a ${variable} reference"),
    ],
)
def test_unsafe_key_templates(template: str, message: str) -> None:
    problem = only_problem(with_destination(f"key: '{template}'"))
    assert (problem.line, problem.key, problem.message) == (5, "destination.key", message)


def test_key_template_must_be_a_string() -> None:
    problem = only_problem(with_destination("key: [a]"))
    assert (problem.key, problem.message) == (
        "destination.key",
        "expected a key template string, got ['a']",
    )


def test_missing_bucket() -> None:
    problem = only_problem("source:\n  paths: [/data/in]\ndestination:\n  key: '${relpath}'\n")
    assert (problem.key, problem.message) == (
        "destination.bucket",
        "is required (a non-empty string)",
    )
    assert problem.line == 3  # the closest line: its section


@pytest.mark.parametrize(
    "bucket", ["Lab-Raw", "lab_raw", "ab", "-lab", "lab-", "a" * 64, "lab raw"]
)
def test_invalid_bucket_names(bucket: str) -> None:
    problem = only_problem(MINIMAL_JOB.replace("lab-raw", f"'{bucket}'"))
    assert (problem.line, problem.key) == (4, "destination.bucket")
    assert problem.message == f"{bucket!r} is not a valid S3 bucket name"


@pytest.mark.parametrize("bucket", ["abc", "lab.raw-2024", "a" * 63])
def test_valid_bucket_names(bucket: str) -> None:
    assert job(MINIMAL_JOB.replace("lab-raw", bucket)).destination.bucket == bucket


def test_bad_durations_and_sizes() -> None:
    problems = problems_of(
        "source:\n  paths: [/data/in]\n  settle: 10x\n  rescan: 0\n"
        "destination:\n  bucket: lab-raw\n  bandwidth: lots\n"
        "retry:\n  backoff: {initial: 1w}\n"
    )
    assert [(p.line, p.key, p.message) for p in problems] == [
        (
            3,
            "source.settle",
            "expected a duration such as 30s, 15m, 1h, 1d or a number of seconds, got '10x'",
        ),
        (4, "source.rescan", "must be longer than zero"),
        (7, "destination.bandwidth", "expected a size such as 512, 8MiB or 50MB/s, got 'lots'"),
        (
            9,
            "retry.backoff.initial",
            "expected a duration such as 30s, 15m, 1h, 1d or a number of seconds, got '1w'",
        ),
    ]


def test_zero_bandwidth_and_max_below_initial() -> None:
    problems = problems_of(
        with_destination("bandwidth: 0") + "retry:\n  backoff: {initial: 1h, max: 1m}\n"
    )
    assert [(p.key, p.message) for p in problems] == [
        ("destination.bandwidth", "must be larger than zero"),
        ("retry.backoff.max", "must not be smaller than initial"),
    ]


def test_literal_secret_in_trigger_header_is_refused() -> None:
    problem = only_problem(
        MINIMAL_JOB + "trigger:\n  url: https://catalog.example/api\n"
        "  headers: {Authorization: 'Bearer s3cr3t-token'}\n"
    )
    assert (problem.line, problem.key) == (7, "trigger.headers.Authorization")
    assert problem.message == "secrets never live in YAML: use ${env:NAME} or ${file:/path}"


@pytest.mark.parametrize("value", ["Bearer ${env:TOKEN}", "${file:/etc/uploaderd/token}"])
def test_secret_reference_in_trigger_header_is_accepted(value: str) -> None:
    parsed = job(
        MINIMAL_JOB + "trigger:\n  url: https://catalog.example/api\n"
        f"  headers: {{Authorization: '{value}', X-Instrument: scope-a}}\n"
    )
    assert parsed.trigger is not None
    assert dict(parsed.trigger.headers) == {"Authorization": value, "X-Instrument": "scope-a"}


def test_trigger_url_with_password_or_wrong_scheme() -> None:
    problem = only_problem(MINIMAL_JOB + "trigger:\n  url: https://u:pw@catalog.example/\n")
    assert (problem.key, problem.message) == ("trigger.url", "must not contain a password")
    problem = only_problem(MINIMAL_JOB + "trigger:\n  url: ftp://catalog.example/\n")
    assert (problem.key, problem.message) == (
        "trigger.url",
        "expected an http:// or https:// URL, got 'ftp://catalog.example/'",
    )


def test_kms_key_id_without_aws_kms() -> None:
    problem = only_problem(with_destination("sse: AES256\nkms_key_id: arn:aws:kms:x"))
    assert (problem.line, problem.key) == (6, "destination.kms_key_id")
    assert problem.message == "only applies with sse: aws:kms"


def test_bad_sse() -> None:
    problem = only_problem(with_destination("sse: rot13"))
    assert (problem.key, problem.message) == (
        "destination.sse",
        "expected AES256 or aws:kms, got 'rot13'",
    )


def test_bad_window_strings() -> None:
    problems = problems_of(
        with_destination("windows:\n  - Mon-Fri 19:00-07:00\n  - Funday\n  - Mon 25:00-07:00")
    )
    assert [(p.line, p.key, p.message) for p in problems] == [
        (
            7,
            "destination.windows.1",
            "'Funday': expected e.g. 'Mon-Fri 19:00-07:00', 'Sat-Sun' or '22:00-06:00'",
        ),
        (8, "destination.windows.2", "'25:00' is not a time of day"),
    ]


@pytest.mark.parametrize("name", ["Scope-A", "-scope", "scope a", "scope.a", "_x", "ünï"])
def test_invalid_job_name(name: str) -> None:
    problem = only_problem(f"name: '{name}'\n" + MINIMAL_JOB)
    assert (problem.line, problem.key) == (1, "name")
    assert problem.message == f"{name!r} is not a valid job name: use [a-z0-9][a-z0-9_-]*"


def test_invalid_job_name_from_the_file_stem(tmp_path: Path) -> None:
    file = write(tmp_path / "Scope A.yaml", MINIMAL_JOB)
    with pytest.raises(ConfigError) as caught:
        load_job(file, S3Settings())
    assert [(p.file, p.key, p.message) for p in caught.value.problems] == [
        (file, "name", "'Scope A' is not a valid job name: use [a-z0-9][a-z0-9_-]*")
    ]


def test_metadata_sha256_is_reserved() -> None:
    problem = only_problem(with_destination("metadata: {SHA256: abc}"))
    assert (problem.key, problem.message) == (
        "destination.metadata.SHA256",
        "sha256 is set by uploaderd itself",
    )


def test_marker_must_be_a_file_name() -> None:
    problem = only_problem(MINIMAL_JOB + "session:\n  complete_when: {marker: done/x}\n")
    assert (problem.key, problem.message) == (
        "session.complete_when.marker",
        "expected a file name such as RunComplete.txt",
    )


def test_bad_exclude_pattern() -> None:
    problem = only_problem(
        "source:\n  paths: [/data/in]\n  exclude: ['/abs/*.tmp']\ndestination: {bucket: lab-raw}\n"
    )
    assert (problem.line, problem.key) == (3, "source.exclude.0")
    assert problem.message == (
        "'/abs/*.tmp': patterns match paths relative to the root; drop the '/'"
    )


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    file = write(
        tmp_path / "three.yaml",
        """\
source:
  paths: [relative/dir]
destination:
  bucket: Lab_Raw
retry:
  max_atempts: 3
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_job(file, S3Settings())
    problems = caught.value.problems
    assert [(p.file, p.line, p.key) for p in problems] == [
        (file, 2, "source.paths.0"),
        (file, 4, "destination.bucket"),
        (file, 6, "retry.max_atempts"),
    ]
    assert problems[2].message.startswith("unknown key; did you mean 'max_attempts'?")
    lines = str(caught.value).splitlines()
    assert lines == [str(p) for p in problems]
    assert lines[0] == f"{file}:2: source.paths.0: 'relative/dir' is not an absolute path"


# --- load_jobs: the jobs directory ---------------------------------------------------------------


def test_load_jobs_a_broken_file_does_not_hide_valid_ones(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", MINIMAL_JOB)
    other = write(tmp_path / "other.yaml", MINIMAL_JOB.replace("/data/in", "/data/other"))
    broken = write(tmp_path / "broken.yaml", "source: [\n")
    write(tmp_path / "example.yaml.sample", "this: is: not: valid")
    write(tmp_path / "notes.txt", "ignored")
    (tmp_path / "dir.yaml").mkdir()

    jobs = load_jobs(tmp_path, S3Settings())

    assert sorted(jobs.jobs) == ["good", "other"]
    assert jobs.jobs["good"].file == good
    assert jobs.jobs["other"].file == other
    assert jobs.jobs["other"].source.paths == (Path("/data/other"),)
    assert jobs.broken_files == frozenset({broken})
    assert len(jobs.problems) == 1
    assert jobs.problems[0].file == broken
    assert jobs.problems[0].message.startswith("invalid YAML: ")


def test_load_jobs_ignores_sample_files(tmp_path: Path) -> None:
    write(tmp_path / "scope-a.yaml.sample", MINIMAL_JOB)
    jobs = load_jobs(tmp_path, S3Settings())
    assert dict(jobs.jobs) == {}
    assert jobs.problems == ()
    assert jobs.broken_files == frozenset()


def test_load_jobs_two_files_with_the_same_job_name(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", "name: scope\n" + MINIMAL_JOB)
    second = write(tmp_path / "b.yaml", "name: scope\n" + MINIMAL_JOB)

    jobs = load_jobs(tmp_path, S3Settings())

    assert list(jobs.jobs) == ["scope"]
    assert jobs.jobs["scope"].file == first  # files are read in name order
    assert jobs.broken_files == frozenset({second})
    assert jobs.problems == (
        ConfigProblem(second, None, "name", f"job 'scope' is also defined in {first}"),
    )


def test_load_jobs_passes_the_daemon_s3_defaults(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", MINIMAL_JOB)
    defaults = S3Settings(endpoint_url="http://127.0.0.1:9000", checksum="when_required")
    assert load_jobs(tmp_path, defaults).jobs["a"].destination.s3 == defaults


def test_load_jobs_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    jobs = load_jobs(missing, S3Settings())
    assert dict(jobs.jobs) == {}
    [problem] = jobs.problems
    assert problem.file == missing
    assert problem.message.startswith("cannot list the jobs directory: ")


def test_after_upload_registered_needs_a_trigger() -> None:
    [problem] = problems_of(
        "source: {paths: [/data/in]}\ndestination: {bucket: lab-raw}\n"
        "after_upload: delete\nafter_upload_when: registered\n"
    )
    assert (problem.line, problem.key) == (4, "after_upload_when")
    assert problem.message == "registered needs a trigger block to register with"


def test_move_to_inside_a_root_is_refused() -> None:
    [problem] = problems_of(
        "source: {paths: [/data/in]}\ndestination: {bucket: lab-raw}\n"
        "after_upload: {move_to: /data/in/done}\n"
    )
    assert (problem.line, problem.key) == (3, "after_upload.move_to")
    assert problem.message == "/data/in/done is inside a watched root; move files out of it"


def test_a_few_aliases_are_fine_and_an_alias_bomb_is_refused_at_its_line() -> None:
    headers = """\
source: {paths: [/data]}
destination: {bucket: lab-raw}
trigger:
  url: http://127.0.0.1:9/x
  headers: &h {X-Lab: one}
x: &x [a, b]
"""
    YamlDocument(None, headers + "y: [*x, *x]\n")  # no problem: a few aliases
    bomb = headers + "".join(
        f"l{n}: &l{n} [{', '.join([f'*l{n - 1}' if n else '*x'] * 10)}]\n" for n in range(5)
    )
    document = YamlDocument(None, bomb)
    assert [(p.line, p.message) for p in document.problems] == [
        (
            10,
            "aliases (*name) here stand for more than 10,000 values once expanded; refusing "
            "the file (write the values out, or use fewer aliases)",
        )
    ]
    assert document.data is None, "nothing was built"
