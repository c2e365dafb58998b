"""The config files the package ships load with the real loader, every key of the sample."""

from __future__ import annotations

from pathlib import Path

from uploaderd.config.settings import S3Settings, load_daemon_config, parse_job_text

ETC = Path(__file__).resolve().parents[2] / "etc" / "uploaderd"


def test_the_shipped_daemon_config_loads_with_the_contract_defaults() -> None:
    config = load_daemon_config(ETC / "uploaderd.yaml", env={})
    assert config.metrics_listen == "127.0.0.1:9464"
    assert config.jobs_dir == Path("/etc/uploaderd/jobs.d")
    assert config.shutdown_grace == 60.0


def test_the_sample_job_loads_once_renamed(tmp_path: Path) -> None:
    text = (ETC / "jobs.d" / "example.yaml.sample").read_text()
    job = parse_job_text(text, name="example", defaults=S3Settings())
    assert job.name == "scope-a"
    assert job.destination.bandwidth == 50_000_000
    assert job.trigger is not None and job.session.group_by == "top_dir"
