# syntax=docker/dockerfile:1
#
# One image for every rentalbook binary. Each Kubernetes Deployment picks its
# program with `command:` (k8s/base/*.yaml); the image has no ENTRYPOINT.
#
#   docker build -t rentalbook:dev .
#   docker run --rm rentalbook:dev book-svc --help
#
# The binaries (BINARIES below): book-svc, reserve-svc, rental-svc, view-svc,
# the REST gateway edge, and the operator command `rentalbook`.
# scripts/check-manifests checks that every name in it is a binary target of
# the workspace, and that every binary of the product is in it.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- build stage
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
ARG BINARIES="book-svc reserve-svc rental-svc view-svc edge rentalbook"
# The protos compile with protox (no system protoc), so the rust image has
# everything the build needs. The cache mounts keep the registry and the
# target directory between builds (BuildKit).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace \
        $(for bin in ${BINARIES}; do printf -- '--bin %s ' "${bin}"; done) \
    && mkdir -p /out \
    && for bin in ${BINARIES}; do install -m 0755 "target/release/${bin}" /out/; done

# -------------------------------------------------------------- runtime stage
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# CA certificates for TLS to an external PostgreSQL or NATS; nothing else.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 rentalbook \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin rentalbook
COPY --from=build /out/ /usr/local/bin/
# gRPC ports of rental-svc, reserve-svc, book-svc and view-svc and their
# Prometheus metrics (port + 1000); the edge's HTTP port (REST, /healthz and
# /metrics).
EXPOSE 8081 8082 8083 8084 9081 9082 9083 9084 8088
USER 10001:10001
CMD ["rentalbook", "--help"]
