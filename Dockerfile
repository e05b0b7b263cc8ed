# syntax=docker/dockerfile:1
# The image of Delivery Backbone's own services (processor, sink, alert forwarder, migrations,
# simulator, setup jobs). One image, the `backbone` CLI as entrypoint; docker-compose.yml picks
# the command per service. No secret is baked in: settings come from BACKBONE_* variables
# (or BACKBONE_<FIELD>_FILE files) at run time.
FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN groupadd --system --gid 10001 backbone \
    && useradd --system --uid 10001 --gid backbone --home-dir /app --shell /usr/sbin/nologin backbone

WORKDIR /app
# Dependencies first (cached while only the code changes): install the project's pinned
# requirements from pyproject.toml with a stub package, then the real source.
COPY pyproject.toml README.md ./
RUN python -m venv /opt/venv \
    && mkdir -p backbone && touch backbone/__init__.py \
    && pip install . \
    && pip uninstall -y delivery-backbone \
    && rm -rf backbone build ./*.egg-info

# The repository layout is kept under /app (REPO_ROOT): config/missions.yaml, the Avro
# schemas, SQL migrations, dashboards and deploy/ scripts are read from it.
COPY . .
RUN pip install --no-deps -e . \
    && mkdir -p /var/lib/backbone/data /var/lib/backbone/kafka-plan \
    && chown -R backbone:backbone /var/lib/backbone

USER backbone
ENV BACKBONE_DATA_DIR=/var/lib/backbone/data
ENTRYPOINT ["backbone"]
CMD ["--help"]
