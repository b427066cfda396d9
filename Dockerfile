# featurewell server image: the featurewell wheel built in one stage, installed into a slim runtime
# that runs as a non-root user with no compilers. `make lint` checks it with hadolint.
#
# Supply chain: both stages start from the same base pinned by digest (update the tag and the
# digest together), and every Python package comes from a lock file with hashes
# (requirements.lock: the server's dependencies; requirements-build.lock: the wheel's build
# tools), installed with --require-hashes: a package whose bytes changed is refused. The locks
# are `pip-compile --generate-hashes` output (docs/deploy.md says how to refresh them).
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7 AS build
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r requirements-build.lock
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
# The wheel force-includes the example repo (`featurewell demo` serves it when installed).
COPY examples ./examples
# No build isolation: the locked hatchling above builds it, not one fetched unpinned.
RUN pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
RUN useradd --system --uid 10001 --home /srv featurewell
COPY requirements.lock /tmp/requirements.lock
# Binary wheels only: the runtime has no compiler, and a wheel's hash is the one locked.
RUN pip install --no-cache-dir --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
    && rm /tmp/requirements.lock
COPY --from=build /wheels /wheels
# Its dependencies are all installed above (--no-deps: nothing unlocked slips in).
RUN pip install --no-cache-dir --no-deps /wheels/*.whl && rm -rf /wheels
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
