# Sentinel's container image: `docker build -t sentinel:0.1.0 .` (see docs/deployment.md).
#
# Stage 1 builds the wheel; stage 2 installs the CPU build of torch, then the wheel with every dependency pinned
# by constraints.txt, and runs `sentinel run` as an unprivileged user. No secrets are baked in: the database
# URL, Kafka password, API tokens and webhook secrets come from SENTINEL_... variables at run time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY detectors ./detectors
COPY storage ./storage
COPY monitor ./monitor
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# The root filesystem is read-only in Kubernetes; libraries that cache under $HOME use /tmp (an emptyDir).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba \
    HF_HOME=/tmp/huggingface

# A fixed uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be owned by it (fsGroup).
RUN groupadd --system --gid 10001 sentinel \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/sentinel --no-create-home \
       --shell /usr/sbin/nologin sentinel \
    && mkdir -p /var/lib/sentinel /etc/sentinel \
    && chown 10001:10001 /var/lib/sentinel

# torch first, from the CPU index: from PyPI alone pip would pull the multi-GB CUDA build. Its own dependencies
# come from PyPI, pinned by constraints.txt like everything else.
COPY constraints.txt /tmp/constraints.txt
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -c /tmp/constraints.txt "torch==2.13.0+cpu"

COPY --from=build /wheels /tmp/wheels
RUN pip install -c /tmp/constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt

# A minimal configuration, so that `docker run` with SENTINEL_... variables works; the Helm chart mounts its
# own file over it. The API stays on loopback here: without tokens a public bind is refused.
RUN printf 'log:\n  json_lines: true\n' > /etc/sentinel/config.yaml

USER 10001:10001
# SQLite's default database (sqlite:///sentinel.db) is relative to here, the only writable directory.
WORKDIR /var/lib/sentinel
EXPOSE 8080

# Liveness for plain Docker (Kubernetes ignores it and uses the chart's probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

# SIGTERM stores the windows that are due, commits and exits 0; exec form so the signal reaches sentinel.
ENTRYPOINT ["sentinel"]
CMD ["run", "--config", "/etc/sentinel/config.yaml"]
