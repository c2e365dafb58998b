"""Job files are a privilege boundary: who may write them, which roots and buckets they reach."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from uploaderd.cli import main
from uploaderd.config.jobpolicy import INSECURE_JOB_FILES_ENV, JobPolicy
from uploaderd.config.settings import S3Settings, load_daemon_config, load_jobs
from uploaderd.errors import ConfigError, ConfigProblem


def job_text(root: str = "/data/in", bucket: str = "lab-raw", move_to: str | None = None) -> str:
    text = f"source:\n  paths: [{root}]\ndestination:\n  bucket: {bucket}\n"
    if move_to is not None:
        text += f"after_upload: {{move_to: {move_to}}}\n"
    return text


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.d"
    path.mkdir(mode=0o755)
    return path


def strict() -> JobPolicy:
    return JobPolicy.for_this_process()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


# --- file modes and owners ---------------------------------------------------------------------


def test_a_file_only_its_owner_can_write_is_read(jobs_dir: Path) -> None:
    write(jobs_dir / "ok.yaml", job_text(), 0o644)
    write(jobs_dir / "private.yaml", job_text("/data/p"), 0o600)
    loaded = load_jobs(jobs_dir, S3Settings(), strict())
    assert sorted(loaded.jobs) == ["ok", "private"]
    assert loaded.problems == ()


@pytest.mark.parametrize(("mode", "shown"), [(0o664, "0664"), (0o646, "0646"), (0o666, "0666")])
def test_a_file_writable_by_group_or_others_is_refused(
    jobs_dir: Path, mode: int, shown: str
) -> None:
    good = write(jobs_dir / "good.yaml", job_text("/data/good"))
    bad = write(jobs_dir / "bad.yaml", job_text("/data/bad"), mode)

    loaded = load_jobs(jobs_dir, S3Settings(), strict())

    assert list(loaded.jobs) == ["good"]  # the other jobs go on
    assert loaded.jobs["good"].file == good
    assert loaded.broken_files == frozenset({bad})
    [problem] = loaded.problems
    assert (problem.file, problem.line, problem.key) == (bad, None, None)
    assert f"writable by group or others (mode {shown})" in problem.message
    assert f"chmod go-w {bad}" in problem.message
    assert INSECURE_JOB_FILES_ENV in problem.message


@needs_root
def test_a_file_owned_by_another_user_is_refused(jobs_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    bad = write(jobs_dir / "theirs.yaml", job_text())
    os.chown(bad, nobody.pw_uid, nobody.pw_gid)

    loaded = load_jobs(jobs_dir, S3Settings(), strict())

    assert dict(loaded.jobs) == {}
    [problem] = loaded.problems
    assert (problem.file, problem.line, problem.key) == (bad, None, None)
    assert f"owned by nobody (uid {nobody.pw_uid})" in problem.message
    assert "root (uid 0)" in problem.message
    assert f"chown root {bad}" in problem.message


@needs_root
def test_both_problems_of_one_file_are_reported(jobs_dir: Path) -> None:
    bad = write(jobs_dir / "theirs.yaml", job_text(), 0o666)
    os.chown(bad, pwd.getpwnam("nobody").pw_uid, -1)
    loaded = load_jobs(jobs_dir, S3Settings(), strict())
    assert [("chmod go-w" in p.message, "chown root" in p.message) for p in loaded.problems] == [
        (True, False),
        (False, True),
    ]


@needs_root
def test_the_service_user_may_own_job_files(jobs_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    write(jobs_dir / "svc.yaml", job_text())
    os.chown(jobs_dir / "svc.yaml", nobody, -1)
    # What for_this_process() gives the daemon when it runs as that user.
    policy = JobPolicy(trusted_uids=frozenset({0, nobody}))
    assert list(load_jobs(jobs_dir, S3Settings(), policy).jobs) == ["svc"]


def test_the_user_running_the_daemon_is_trusted() -> None:
    assert JobPolicy.for_this_process().trusted_uids == {0, os.geteuid()}


def test_a_symlinked_job_file_is_judged_by_its_target(jobs_dir: Path, tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere.yaml", job_text(), 0o666)
    (jobs_dir / "linked.yaml").symlink_to(target)
    loaded = load_jobs(jobs_dir, S3Settings(), strict())
    assert dict(loaded.jobs) == {}
    assert "writable by group or others" in loaded.problems[0].message


def test_a_jobs_directory_others_can_write_refuses_every_job(jobs_dir: Path) -> None:
    first = write(jobs_dir / "a.yaml", job_text("/data/a"))
    second = write(jobs_dir / "b.yaml", job_text("/data/b"))
    jobs_dir.chmod(0o777)

    loaded = load_jobs(jobs_dir, S3Settings(), strict())

    assert dict(loaded.jobs) == {}
    # Broken, not gone: on reload the versions read while it was safe keep running.
    assert loaded.broken_files == frozenset({first, second})
    [problem] = loaded.problems
    assert (problem.file, problem.line, problem.key) == (jobs_dir, None, None)
    assert "the jobs directory is writable by group or others (mode 0777)" in problem.message
    assert f"chmod go-w {jobs_dir}" in problem.message


@needs_root
def test_a_jobs_directory_owned_by_another_user_is_refused(jobs_dir: Path) -> None:
    write(jobs_dir / "a.yaml", job_text())
    os.chown(jobs_dir, pwd.getpwnam("nobody").pw_uid, -1)
    loaded = load_jobs(jobs_dir, S3Settings(), strict())
    assert dict(loaded.jobs) == {}
    assert f"chown root {jobs_dir}" in loaded.problems[0].message


def test_load_jobs_without_a_policy_is_strict(jobs_dir: Path) -> None:
    write(jobs_dir / "bad.yaml", job_text(), 0o666)
    assert dict(load_jobs(jobs_dir, S3Settings()).jobs) == {}


# --- the development flag ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "allowed"), [("1", True), ("yes", True), ("0", False), ("", False), (None, False)]
)
def test_the_env_flag_reaches_load_jobs_through_the_daemon_config(
    jobs_dir: Path, value: str | None, allowed: bool
) -> None:
    write(jobs_dir / "loose.yaml", job_text(), 0o666)
    jobs_dir.chmod(0o777)
    env = {} if value is None else {INSECURE_JOB_FILES_ENV: value}
    config = load_daemon_config(None, env=env)
    assert config.job_policy.allow_insecure_files is allowed
    loaded = load_jobs(jobs_dir, S3Settings(), config.job_policy)
    assert list(loaded.jobs) == (["loose"] if allowed else [])


# --- allow-lists in the daemon config ----------------------------------------------------------


def config_with(tmp_path: Path, text: str) -> JobPolicy:
    file = write(tmp_path / "uploaderd.yaml", text)
    return load_daemon_config(file, env={}).job_policy


def test_allow_lists_are_read_from_the_daemon_config(tmp_path: Path) -> None:
    policy = config_with(
        tmp_path, "allowed_roots: [/data, /srv/x/]\nallowed_buckets: [lab-raw, 'lab-*']\n"
    )
    assert policy.allowed_roots == (Path("/data"), Path("/srv/x"))
    assert policy.allowed_buckets == ("lab-raw", "lab-*")
    unrestricted = config_with(tmp_path, "workers: 2\n")
    assert (unrestricted.allowed_roots, unrestricted.allowed_buckets) == (None, None)


def test_allowed_roots_must_be_absolute(tmp_path: Path) -> None:
    file = write(tmp_path / "uploaderd.yaml", "allowed_roots: [data, /ok, /a/../b]\n")
    with pytest.raises(ConfigError) as caught:
        load_daemon_config(file, env={})
    assert [(p.line, p.key) for p in caught.value.problems] == [
        (1, "allowed_roots.0"),
        (1, "allowed_roots.2"),
    ]


def load_one(jobs_dir: Path, text: str, policy: JobPolicy) -> tuple[list[str], list[ConfigProblem]]:
    write(jobs_dir / "job.yaml", text)
    loaded = load_jobs(jobs_dir, S3Settings(), policy)
    return list(loaded.jobs), list(loaded.problems)


def test_roots_inside_allowed_roots_pass(jobs_dir: Path) -> None:
    policy = JobPolicy(allowed_roots=(Path("/data"),))
    names, problems = load_one(jobs_dir, job_text("/data/scope-a", move_to="/data/done"), policy)
    assert (names, problems) == (["job"], [])
    assert load_one(jobs_dir, job_text("/data"), policy) == (["job"], [])


def test_a_root_outside_allowed_roots_is_refused_on_its_key(jobs_dir: Path) -> None:
    policy = JobPolicy(allowed_roots=(Path("/data"),))
    # /database only shares a prefix with /data: paths compare by component.
    text = "source:\n  paths:\n    - /data/ok\n    - /database/x\ndestination:\n  bucket: b-1\n"
    names, problems = load_one(jobs_dir, text, policy)
    assert names == []
    [problem] = problems
    assert (problem.line, problem.key) == (4, "source.paths.1")
    assert problem.message == (
        "/database/x is not allowed: it is outside the daemon config's allowed_roots (/data)"
    )


def test_a_move_to_outside_allowed_roots_is_refused(jobs_dir: Path) -> None:
    policy = JobPolicy(allowed_roots=(Path("/data"), Path("/archive")))
    names, problems = load_one(jobs_dir, job_text("/data/in", move_to="/etc/cron.d"), policy)
    assert names == []
    [problem] = problems
    assert (problem.line, problem.key) == (5, "after_upload.move_to")
    assert "outside the daemon config's allowed_roots (/data, /archive)" in problem.message


def test_an_empty_allowed_roots_allows_nothing(jobs_dir: Path) -> None:
    names, problems = load_one(jobs_dir, job_text(), JobPolicy(allowed_roots=()))
    assert names == []
    assert "allowed_roots (empty)" in problems[0].message


def test_a_symlink_out_of_an_allowed_root_is_refused(jobs_dir: Path, tmp_path: Path) -> None:
    allowed = tmp_path / "data"
    allowed.mkdir()
    outside = tmp_path / "secret"
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    policy = JobPolicy(allowed_roots=(allowed,))
    names, problems = load_one(jobs_dir, job_text(str(allowed / "link")), policy)
    assert names == []
    assert f"resolves to {outside}, outside" in problems[0].message


@pytest.mark.parametrize(
    ("bucket", "ok"),
    [("lab-raw", True), ("lab-archive", True), ("lab", False), ("other-raw", False)],
)
def test_buckets_must_match_allowed_buckets(jobs_dir: Path, bucket: str, ok: bool) -> None:
    policy = JobPolicy(allowed_buckets=("lab-raw", "lab-*"))
    names, problems = load_one(jobs_dir, job_text(bucket=bucket), policy)
    assert names == (["job"] if ok else [])
    if not ok:
        [problem] = problems
        assert (problem.line, problem.key) == (4, "destination.bucket")
        assert problem.message == (
            f"{bucket!r} is not allowed: the daemon config's "
            "allowed_buckets (lab-raw, lab-*) does not match it"
        )


# --- credential files named by the environment ----------------------------------------------------


@pytest.mark.parametrize("name", ["PGPASSFILE", "AWS_SHARED_CREDENTIALS_FILE"])
def test_a_missing_credential_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "credentials" / "gone"
    with pytest.raises(ConfigError) as caught:
        load_daemon_config(None, env={name: str(missing)})
    [problem] = caught.value.problems
    assert (problem.file, problem.key) == (missing, name)
    assert problem.message.startswith(f"the file {name} names does not exist; under systemd")
    assert "LoadCredential=" in problem.message


def test_check_reload_runs_without_the_units_credential_files(tmp_path: Path) -> None:
    # What ExecReload= sees under systemd 252 (systemd#35227): the variables set by the unit,
    # the files not there. The reload's check must pass; a plain check must still say why not.
    config = write(tmp_path / "uploaderd.yaml", f"jobs_dir: {tmp_path / 'jobs.d'}\n", 0o644)
    (tmp_path / "jobs.d").mkdir(mode=0o755)
    gone = "/run/credentials/uploaderd.service/"
    env = {"PGPASSFILE": gone + "pgpass", "AWS_SHARED_CREDENTIALS_FILE": gone + "aws-credentials"}
    assert main(["check", "--reload", "-c", str(config)], env=env) == 0
    assert main(["check", "-c", str(config)], env=env) == 2


def test_readable_credential_files_pass(tmp_path: Path) -> None:
    pgpass = write(tmp_path / "pgpass", "*:*:*:*:pw\n", 0o600)
    env = {"PGPASSFILE": str(pgpass), "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    assert load_daemon_config(None, env=env).dsn
