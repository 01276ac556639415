# callsight server image: `docker build -t callsight .` from the repository root.
# Slim, non-root, one process; data (the embedded ClickHouse, generated secrets) under
# /var/lib/callsight, or point CALLSIGHT_DSN at a ClickHouse server (see compose.yaml).
FROM python:3.11-slim AS build
WORKDIR /src
# uv installs exactly the versions pinned in uv.lock (the runtime group only).
RUN pip install --no-cache-dir uv==0.9.13
COPY pyproject.toml uv.lock README.md ./
COPY proto proto
COPY server server
COPY pipeline pipeline
COPY storage storage
COPY loadtest loadtest
RUN uv export --frozen --no-dev --no-emit-project --format requirements-txt > /tmp/requirements.txt \
    && python -m venv /opt/callsight \
    && /opt/callsight/bin/pip install --no-cache-dir --no-deps -r /tmp/requirements.txt \
    && /opt/callsight/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/callsight --create-home callsight
COPY --from=build /opt/callsight /opt/callsight
ENV PATH=/opt/callsight/bin:$PATH \
    CALLSIGHT_LISTEN=0.0.0.0:50051 \
    CALLSIGHT_DATA_DIR=/var/lib/callsight \
    PYTHONUNBUFFERED=1
USER callsight
WORKDIR /var/lib/callsight
VOLUME /var/lib/callsight
EXPOSE 50051
# SERVING from the standard gRPC health service (NOT_SERVING while migrating or draining).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=4); sys.exit(r.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["callsight"]
CMD ["serve"]
