# syntax=docker/dockerfile:1
#
# The footprint-exporter image (docs/container.md): `docker build -t footprint-exporter .`
#
# Two stages on the same base. The builder turns the project and every dependency into wheels;
# the final stage installs only those wheels, offline, and ships no compiler, no build tool, no
# source tree and no pip cache. tests/test_dockerfile.py parses this file and runs its two pip
# commands, exactly as written here, against a clean virtualenv: keep each a single command.
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
# Only what the build needs (pyproject names README.md as the long description).
COPY pyproject.toml README.md ./
COPY exporter ./exporter

# Every dependency (grpcio, protobuf, aiohttp, PyYAML, ...) ships manylinux wheels for amd64 and
# arm64, so no compiler is installed even here. The cache mount only speeds up rebuilds; it is
# not part of any image.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --wheel-dir /wheels .


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

# Offline, from the builder's wheels only; the wheels are bind-mounted for this one step and so
# never become a layer. Installed as root under /usr/local with the default umask: every file is
# world-readable, so the image runs as root or as any other uid (docs/container.md).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels footprint-exporter

# No HEALTHCHECK: Kubernetes ignores it. The Helm chart's liveness and readiness probes call the
# exporter's /healthz and /readyz over HTTP instead.
EXPOSE 9835

# The same entrypoint as the Helm chart's DaemonSet. No CMD: the defaults (listen on :9835, /sys,
# /proc) suit a plain `docker run`; the chart passes the host-mount paths as arguments.
ENTRYPOINT ["footprint-exporter"]
