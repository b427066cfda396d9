# featurewell server image: wheels built in one stage, installed into a slim runtime that runs as
# a non-root user with no compilers. `make lint` checks it with hadolint.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /srv featurewell
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY examples /srv/examples
USER 10001
WORKDIR /srv
ENV FEATUREWELL_HOST=0.0.0.0 \
    FEATUREWELL_PORT=50051 \
    FEATUREWELL_METRICS_PORT=9464 \
    FEATUREWELL_REPO=/srv/examples/streaming_media \
    PYTHONUNBUFFERED=1
# gRPC, Prometheus /metrics
EXPOSE 50051 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2).status; sys.exit(0 if s == h.HealthCheckResponse.SERVING else 1)"]
ENTRYPOINT ["featurewell", "serve"]
