"""The config files the package ships load with the real loader, every key of the sample."""

from __future__ import annotations

from pathlib import Path

from uploaderd.config.settings import S3Settings, parse_job_text

ETC = Path(__file__).resolve().parents[2] / "etc" / "uploaderd"


def test_the_sample_job_loads_once_renamed(tmp_path: Path) -> None:
    text = (ETC / "jobs.d" / "example.yaml.sample").read_text()
    job = parse_job_text(text, name="example", defaults=S3Settings())
    assert job.name == "scope-a"
    assert job.destination.bandwidth == 50_000_000
    assert job.trigger is not None and job.session.group_by == "top_dir"
