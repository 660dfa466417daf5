# syntax=docker/dockerfile:1
# alpaca-exporter container image.
#   docker build -t alpaca-exporter .
#   docker run --rm -p 9877:9877 --read-only alpaca-exporter demo
#   docker run --rm -p 9877:9877 --read-only -e APCA_API_KEY_ID=... -e APCA_API_SECRET_KEY=... \
#     -e EXPORTER_SYMBOLS=AAPL,MSFT alpaca-exporter
# Configuration is the environment (CONTRACT section 3). The process writes nothing to disk, so the
# container runs with a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: the package and its dependencies in a virtual environment -----------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/alpaca-exporter
WORKDIR /src
# Only what the build needs (.dockerignore keeps the context to these too).
COPY pyproject.toml README.md ./
COPY exporter/ ./exporter/
# pip compiles the bytecode here, so the read-only runtime never needs to write it.
RUN /opt/alpaca-exporter/bin/pip install --no-cache-dir . \
    && /opt/alpaca-exporter/bin/alpaca-exporter --version

# --- runtime: the virtual environment on a clean slim image, as an unprivileged user ---------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="alpaca-exporter" \
      org.opencontainers.image.description="Prometheus exporter for an Alpaca market-data feed with a Yahoo Finance fallback" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 exporter \
    && useradd --system --uid 10001 --gid exporter --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin exporter
COPY --from=builder /opt/alpaca-exporter /opt/alpaca-exporter
ENV PATH="/opt/alpaca-exporter/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EXPORTER_HOST=0.0.0.0 \
    EXPORTER_PORT=9877 \
    EXPORTER_LOG_FORMAT=json \
    EXPORTER_LOG_LEVEL=INFO
# An empty, root-owned working directory: no stray .env file is picked up by accident.
WORKDIR /app
USER 10001:10001
EXPOSE 9877
# No curl in the slim image: the interpreter probes /healthz (any non-2xx answer raises).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('EXPORTER_PORT', '9877'), timeout=4)"]
ENTRYPOINT ["alpaca-exporter"]
CMD ["run"]
