# syntax=docker/dockerfile:1
#
# The footprint-exporter image (docs/container.md): `docker build -t footprint-exporter .`
#
# Two stages on the same base. The builder downloads the locked dependencies (requirements.lock,
# every file checked against its hash) and builds the project's wheel; the final stage installs
# only those wheels, offline, and ships no compiler, no build tool, no source tree and no pip
# cache. tests/test_dockerfile.py parses this file and runs every RUN of both stages, exactly as
# written here, against a clean virtualenv: keep each a single `python -m pip` command.
#
# Base image: Python 3.11 on Debian 12 (bookworm), slim, pinned by its full version tag. Tags are
# rebuilt upstream (Debian security fixes), so for a reproducible build pin the digest as well:
#   docker buildx imagetools inspect python:3.11.15-slim-bookworm   # the index digest, "Digest:"
# then set it below as python:3.11.15-slim-bookworm@sha256:<that digest> (or pass
# --build-arg PYTHON_IMAGE=...). Both stages take this one ARG, so they cannot drift apart.
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The locked dependencies first, so that their layer is rebuilt only when the lock changes. The
# lock (uv, docs/container.md#locked-dependencies) pins every runtime dependency and lists the
# sha256 of each of its files; pip refuses any file whose hash is not there. Binary wheels only:
# every locked version ships manylinux wheels for amd64 and arm64 (tests/test_lock.py checks), so
# no compiler is installed even here, and a wheel built from an sdist could not match its hash.
# The cache mount only speeds up rebuilds; it is not part of any image.
COPY requirements.lock /wheels/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip download --only-binary=:all: --require-hashes --no-deps \
        --dest /wheels -r /wheels/requirements.lock

# Then the project itself, with nothing else (pyproject names README.md as the long description).
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir /wheels .


FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="footprint-exporter" \
      org.opencontainers.image.description="Prometheus exporter for the energy and CO2e of ML workloads on Kubernetes nodes" \
      org.opencontainers.image.source="https://example.invalid/footprint-exporter" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.5.0"

# Nothing is written at run time: no bytecode (pip compiled it at install), unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Offline, from the builder's wheels only; the wheels are bind-mounted for these steps and so
# never become a layer. First the locked set, each wheel checked against the lock's hashes again,
# then the project without its dependencies (so nothing but the lock decides them), then
# `pip check`: the build fails if the locked set does not satisfy the project's requirements.
# Installed as root under /usr/local with the default umask: every file is world-readable, so the
# image runs as root or as any other uid (docs/container.md).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels \
        --require-hashes --no-deps -r /wheels/requirements.lock
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels \
        --no-deps footprint-exporter
RUN python -m pip check

# No HEALTHCHECK: Kubernetes ignores it. The Helm chart's liveness and readiness probes call the
# exporter's /healthz and /readyz over HTTP instead.
EXPOSE 9835

# The same entrypoint as the Helm chart's DaemonSet. No CMD: the defaults (listen on :9835, /sys,
# /proc) suit a plain `docker run`; the chart passes the host-mount paths as arguments.
ENTRYPOINT ["footprint-exporter"]
