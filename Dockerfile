# syntax=docker/dockerfile:1
#
# One image for every rentalbook binary. Each Kubernetes Deployment picks its
# program with `command:` (k8s/base/services/*.yaml); the image has no
# ENTRYPOINT.
#
#   docker build -t rentalbook:dev .
#   docker run --rm rentalbook:dev book-svc --help
#
# The binaries (BINARIES below): book-svc, reserve-svc, rental-svc, view-svc,
# notice-svc, the REST gateway edge, and the operator command `rentalbook`.
# scripts/check-manifests checks that every name in it is a binary target of
# the workspace, and that every binary of the product is in it.
#
# Stages:
#   chef     the Rust toolchain and cargo-chef
#   planner  reduces the workspace to its manifests and Cargo.lock (recipe.json)
#   build    compiles the dependencies from recipe.json alone, in a layer of
#            its own that stays cached until a manifest or Cargo.lock changes;
#            then copies the sources and compiles only the workspace's crates
#   runtime  distroless (glibc, libgcc, CA certificates, tzdata; no shell, no
#            package manager) with the binaries, as uid 10001
#
# The binaries are built with the `dist` profile (Cargo.toml: release with
# fat LTO, one codegen unit, symbols stripped).
#
# Base images by tag. For a release, pin each by digest (docs/DEPLOY.md,
# "Build the image"), here or with --build-arg, e.g.
#   --build-arg RUST_IMAGE=rust:1.95-trixie@sha256:<digest>
# Both come from the same Debian release (trixie is Debian 13): the binaries
# link against the build stage's glibc and run on the runtime's.

ARG RUST_IMAGE=rust:1.95-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

# ------------------------------------------------------------------- toolchain
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# --------------------------------------------------------------------- planner
# Reruns on any change of the build context, but its output, recipe.json,
# changes only with the manifests and Cargo.lock.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ------------------------------------------------------------------ build stage
FROM chef AS build
ARG BINARIES="book-svc reserve-svc rental-svc view-svc notice-svc edge rentalbook"
# The dependencies: the same profile, packages and binaries as the build
# below, so that it finds every dependency already compiled. The protos
# compile with protox (no system protoc); the rust image has the C compiler
# that ring and the bundled SQLite need.
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --profile dist --locked --workspace \
        $(for bin in ${BINARIES}; do printf -- '--bin %s ' "${bin}"; done) \
        --recipe-path recipe.json
# The workspace's own crates.
COPY . .
RUN cargo build --profile dist --locked --workspace \
        $(for bin in ${BINARIES}; do printf -- '--bin %s ' "${bin}"; done) \
    && mkdir -p /out \
    && for bin in ${BINARIES}; do install -m 0755 "target/dist/${bin}" /out/; done

# -------------------------------------------------------------- runtime stage
# The binaries need glibc and libgcc_s (nothing else: TLS is rustls, SQLite is
# compiled in); distroless/cc has both, CA certificates for TLS to an external
# PostgreSQL or NATS, and PATH including /usr/local/bin, so that a
# Deployment's `command: ["book-svc"]` finds its binary. No shell: the
# Deployments use native gRPC and HTTP probes and the `sleep` preStop action.
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=build /out/ /usr/local/bin/
# The `nonroot` variant's working directory is its user's home (uid 65532),
# which uid 10001 need not be able to enter.
WORKDIR /
# gRPC ports of rental-svc, reserve-svc, book-svc, view-svc and notice-svc
# and their Prometheus metrics (port + 1000); the edge's HTTP port (REST,
# /healthz and /metrics).
EXPOSE 8081 8082 8083 8084 8085 9081 9082 9083 9084 9085 8088
# The uid and gid the Deployments run as (runAsUser/runAsGroup 10001). The
# binaries belong to root and cannot be changed by the process.
USER 10001:10001
CMD ["rentalbook", "--help"]
