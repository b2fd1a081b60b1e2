# Turnout gateway image: serves the bundled example repository unless another is mounted at /models.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/turnout
# The package and its dependencies (the generated stubs are committed, so no protoc at build time).
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY gateway ./gateway
COPY runtimes ./runtimes
RUN pip install .

COPY examples/models /models
# A fixed numeric user and group (deploy/kubernetes/deployment.yaml runs as 10001:10001): Kubernetes
# can check runAsNonRoot only against a numeric USER. The gateway writes only to the state directory
# (and /tmp with --processes N, and --capture-dir when given), so the root filesystem can be read-only.
RUN groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin turnout \
    && mkdir -p /var/lib/turnout && chown 10001:10001 /var/lib/turnout
USER 10001:10001

# Routing policies and their history; mount a volume here to keep them across containers.
VOLUME /var/lib/turnout
ENV TURNOUT_REPOSITORY=/models \
    TURNOUT_STATE_DIR=/var/lib/turnout \
    TURNOUT_HOST=0.0.0.0 \
    TURNOUT_PORT=8001
# gRPC inference, Prometheus metrics, the control plane (--control-address; loopback unless set).
EXPOSE 8001 8002 8003
STOPSIGNAL SIGTERM
# With TLS on (TURNOUT_TLS_CERT_FILE, TURNOUT_TLS_KEY_FILE), also set TURNOUT_TLS_CA_FILE to the CA that
# signed the certificate: `turnout health` reads it and speaks TLS. Under mutual TLS the check needs a
# client certificate: override it (--tls-cert-file, --tls-key-file) or rely on the orchestrator's probe.
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
    CMD ["turnout", "health", "--server", "127.0.0.1:8001", "--timeout-s", "3"]
ENTRYPOINT ["turnout", "serve"]
