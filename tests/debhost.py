"""A Debian host for the system tier: the .deb built and installed the README's way, a
job and its folder."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from nspawn import Container

from devstack import ACCESS_KEY, SECRET_KEY, RcloneS3Server, free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
UNIT = "uploaderd.service"
# What the README's install step 2 exports, for the commands a test runs as root.
CREDENTIALS = (
    "PGPASSFILE=/etc/uploaderd/credentials/pgpass "
    "AWS_SHARED_CREDENTIALS_FILE=/etc/uploaderd/credentials/aws-credentials"
)
PASSWORD = "uploaderd-systest-password"
# The old build an upgrade starts from: the last commit before migration 0010, so the new
# build needs `uploaderd migrate`. Its .deb is built once and cached beside the root.
OLD_COMMIT = "60f0d9b"


def build_deb(source: Path, output: Path) -> Path:
    proc = subprocess.run(
        [str(source / "packaging" / "build-deb"), "--output", str(output)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def boot(root: Path, name: str, shared: Path) -> Container:
    """A container booted on ``root``; ``shared`` (made readable to it) is its /srv/systest."""
    shared.chmod(0o755)
    container = Container(root, name, shared)
    try:
        container.boot()
    except BaseException:
        container.poweroff()
        raise
    return container


def readme_credentials_block() -> str:
    """Install step 2 of the README, word for word."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"2\. \*\*Credentials\*\*.*?```sh\n(.*?)```", readme, re.S)
    assert match, "README.md has no credentials step"
    return "\n".join(line.strip() for line in match.group(1).splitlines())


def apt_install(container: Container, deb: Path, apt: str = "apt-get") -> None:
    """``apt install ./dist/….deb`` in the container, non-interactively, as automation runs
    it (``apt``: the README's words; ``apt-get``: a script's)."""
    (container.shared / "dist").mkdir(exist_ok=True)
    (container.shared / "dist" / deb.name).write_bytes(deb.read_bytes())
    container.sh(
        f"cd /srv/systest && DEBIAN_FRONTEND=noninteractive {apt} install -y "
        f"./dist/{deb.name} </dev/null"
    )


def write_file(container: Container, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` inside the container (as root), making its directories."""
    target = container.path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def s3_object(s3: RcloneS3Server, bucket: str, key: str) -> bytes | None:
    client = s3.client()
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return body


def arrives(s3: RcloneS3Server, bucket: str, key: str, data: bytes, timeout: float = 30) -> None:
    """Wait until s3://bucket/key holds exactly ``data``."""
    wait_for(
        lambda: s3_object(s3, bucket, key) == data,
        timeout=timeout,
        interval=0.2,
        message=f"s3://{bucket}/{key} with the bytes written",
    )


def create_database(container: Container) -> None:
    """Install step 1 on the container's own PostgreSQL: the role (with a password) and its
    database."""
    psql = f"runuser -u postgres -- psql -q -p {container.pg_port}"
    container.sh(
        f"cd / && runuser -u postgres -- createuser -p {container.pg_port} uploaderd && "
        f"{psql} -c \"ALTER ROLE uploaderd PASSWORD '{PASSWORD}'\" && "
        f"runuser -u postgres -- createdb -p {container.pg_port} --owner uploaderd uploaderd"
    )


def install_as_the_readme_says(
    container: Container, deb: Path, s3: RcloneS3Server, database: Container | None = None
) -> None:
    """README's Install section: the package, the role and database (on ``database``'s
    PostgreSQL, the container's own by default), the credentials, the schema; not yet a job
    nor the start."""
    apt_install(container, deb, "apt")
    if database is None:
        create_database(container)
    port = (database or container).pg_port
    config = container.path("/etc/uploaderd/uploaderd.yaml")
    text = config.read_text()
    text = text.replace(
        "dsn: postgresql://uploaderd@localhost/uploaderd",
        f"dsn: postgresql://uploaderd@localhost:{port}/uploaderd",
    )
    text = re.sub(r"endpoint_url: null *", f"endpoint_url: {s3.endpoint_url}", text)
    text = text.replace("region: null", "region: us-east-1")
    # Containers share the host's network: each daemon's metrics on a port of its own.
    text = text.replace("listen: 127.0.0.1:9464", f"listen: 127.0.0.1:{free_port()}")
    # A stop hands in-flight uploads back after this long (the multipart scenario).
    text = text.replace("shutdown_grace: 60s", "shutdown_grace: 2s")
    config.write_text(text)
    credentials = (
        readme_credentials_block()
        .replace("db.example:5432", f"localhost:{port}")
        .replace(":PASSWORD", f":{PASSWORD}")
        .replace("AKIA...", ACCESS_KEY)
        .replace("aws_secret_access_key = ...", f"aws_secret_access_key = {SECRET_KEY}")
    )
    container.sh(f"{credentials}\nuploaderd migrate")


def job_yaml(name: str, root: str, bucket: str, **extra: str) -> str:
    lines = [
        f"name: {name}",
        "source:",
        f"  paths: [{root}]",
        "  settle: 1s",
        "destination:",
        f"  bucket: {bucket}",
        *(f"{key}: {value}" for key, value in extra.items()),
    ]
    return "\n".join(lines) + "\n"


def add_job(container: Container, name: str, root: str, bucket: str, **extra: str) -> None:
    """A job file (root's, 0644) and its folder, readable by the service user."""
    container.run("install", "-d", "-m", "0755", root)
    container.path(f"/etc/uploaderd/jobs.d/{name}.yaml").write_text(
        job_yaml(name, root, bucket, **extra)
    )
