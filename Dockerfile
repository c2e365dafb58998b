# uploaderd as a container image: the daemon in a virtualenv under /opt/uploaderd, run as
# the unprivileged user uploaderd (uid 10001) with `uploaderd run` as PID 1.
#
#   docker build -t uploaderd:0.1.0 .
#   docker run --rm uploaderd:0.1.0 --version
#   docker run -d --stop-timeout 90 \
#       -v /srv/uploaderd/uploaderd.yaml:/etc/uploaderd/uploaderd.yaml:ro \
#       -v /srv/uploaderd/jobs.d:/etc/uploaderd/jobs.d:ro -v /data:/data:ro uploaderd:0.1.0
#
# The build stage compiles the dependencies of packaging/requirements.lock (hash-checked, the
# same versions as the Debian package; psycopg2 against Debian's libpq) into a virtualenv;
# the final stage copies that virtualenv onto a fresh python image that has no compiler.
# See docs/install.md ("Container image") and docs/compose.md.

# Both stages use one base image: the virtualenv links to its /usr/local/bin/python3.11.
# Pin a digest as well where builds must repeat (docs/compose.md, "Pinning digests"):
# FROM python:3.11.11-slim-bookworm@sha256:... AS build
FROM python:3.11.11-slim-bookworm AS build

# Debian package versions are not pinned: the mirror drops old versions with each security
# update, so a pin would break the build instead of holding it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libpq-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
WORKDIR /src

# Dependencies first, from the lock files alone: this layer survives source changes.
# The build backend goes into the target venv so that psycopg2 builds without pip's
# build isolation (which would fetch unpinned setuptools); it is removed again below.
COPY packaging/build-requirements.lock packaging/requirements.lock packaging/
RUN python -m venv /opt/uploaderd \
    && /opt/uploaderd/bin/pip install --require-hashes -r packaging/build-requirements.lock \
    && /opt/uploaderd/bin/pip install --require-hashes --no-build-isolation \
        -r packaging/requirements.lock

COPY setup.cfg pyproject.toml README.md ./
COPY uploaderd/ uploaderd/
COPY sql/ sql/
RUN /opt/uploaderd/bin/pip install --no-deps --no-build-isolation . \
    && /opt/uploaderd/bin/pip uninstall -y pip setuptools wheel packaging \
    && /opt/uploaderd/bin/python -c 'import uploaderd.cli, psycopg2' \
    && /opt/uploaderd/bin/uploaderd --version


FROM python:3.11.11-slim-bookworm

# Set by whoever builds (CI: --build-arg REVISION=$(git rev-parse HEAD)); the version's
# default follows uploaderd/__init__.py (a test keeps them equal).
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="uploaderd" \
      org.opencontainers.image.description="Watch folders, record every complete file in PostgreSQL, ship it to S3." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/install.md#container-image" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.11-slim-bookworm"

# libpq5 for psycopg2 (runtime library only); a fixed uid/gid outside the host's system
# range, so that files on bind mounts can be granted to it (setfacl -m u:10001:rX).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 uploaderd \
    && useradd --system --uid 10001 --gid uploaderd --home-dir /var/lib/uploaderd \
        --no-create-home --shell /usr/sbin/nologin uploaderd \
    && install -d -o uploaderd -g uploaderd -m 0700 /var/lib/uploaderd \
    && install -d -m 0755 /etc/uploaderd/jobs.d

COPY --from=build /opt/uploaderd /opt/uploaderd
# The packaged defaults: metrics on 127.0.0.1, which inside a container only the
# HEALTHCHECK reaches. Mount a config with `listen: 0.0.0.0:9464` to let Prometheus scrape.
COPY etc/uploaderd/uploaderd.yaml /etc/uploaderd/uploaderd.yaml

ENV PATH=/opt/uploaderd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UPLOADERD_CONFIG=/etc/uploaderd/uploaderd.yaml \
    UPLOADERD_HEALTHCHECK_URL=http://127.0.0.1:9464/metrics

USER 10001:10001
WORKDIR /var/lib/uploaderd
EXPOSE 9464

# The daemon serves /metrics only once the database answers and the schema is current, so
# "healthy" also means "migrated". Runs inside the container: loopback reaches the endpoint
# whether metrics.listen is 127.0.0.1 or 0.0.0.0. Another port: set UPLOADERD_HEALTHCHECK_URL.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['UPLOADERD_HEALTHCHECK_URL'], timeout=4)"]

# uploaderd is PID 1 and handles SIGTERM itself: stop claiming, give in-flight uploads
# shutdown_grace (60s), hand the rest back, exit 0. Stop with a timeout above it
# (docker stop -t 90, compose stop_grace_period: 90s); docker's default 10s cuts it short.
STOPSIGNAL SIGTERM
ENTRYPOINT ["uploaderd"]
CMD ["run"]
