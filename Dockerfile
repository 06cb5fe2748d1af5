# syntax=docker/dockerfile:1
#
# `cleanroom` in a container: built with the official Rust image (`cargo build --release
# --locked`), run on Debian slim as an unprivileged user, with a health check through
# grpc.health.v1 (`cleanroom health`, no grpcurl shipped).
#
# UNTESTED HERE: this file was written on a machine without a Docker daemon, so neither the
# image build nor the HEALTHCHECK has been run. What it runs is tested: the release build is
# the CI's, and `cleanroom health` is tested against a real server (tests/cli_operations.rs).
#
#   docker build -t cleanroom .
#   docker run -d -p 8443:8443 -v "$PWD/deploy:/etc/cleanroom:ro" -v cleanroom-state:/var/lib/cleanroom \
#       -e CLEANROOM_HEALTH_ARGS="--server https://localhost:8443 --ca /etc/cleanroom/ca.pem" \
#       cleanroom serve --config-file /etc/cleanroom/server.toml
#
# with, in deploy/server.toml, `listen = "0.0.0.0:8443"`, `state = "/var/lib/cleanroom/state.db"`,
# `tls-cert`/`tls-key` under /etc/cleanroom, and the collaboration and data files. The health
# check runs `cleanroom health $CLEANROOM_HEALTH_ARGS` inside the container: the server's
# certificate must name the host it uses (here localhost) and chain to its --ca; a server with
# `client-ca` also needs `--tls-cert`/`--tls-key` of a client certificate of that CA there.
# The check exits 0 while the server answers SERVING and 1 otherwise (also while it drains
# after a first SIGTERM, which `docker stop` sends; a second signal stops it at once).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# .cargo/config.toml selects curve25519-dalek's fast backends; a RUSTFLAGS variable would
# replace it, so none is set.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cleanroom \
    && install -m 0755 target/release/cleanroom /usr/local/bin/cleanroom

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: the system roots for `query`/`health` over https:// without --ca, and for
# tables on object storage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/cleanroom \
        --create-home --shell /usr/sbin/nologin cleanroom
COPY --from=build /usr/local/bin/cleanroom /usr/local/bin/cleanroom
USER cleanroom:cleanroom
WORKDIR /var/lib/cleanroom
# The state database (audit log and privacy ledger) must outlive the container.
VOLUME ["/var/lib/cleanroom"]
EXPOSE 8443
ENV CLEANROOM_HEALTH_ARGS="--server https://localhost:8443"
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "exec cleanroom health --timeout 5 $CLEANROOM_HEALTH_ARGS"]
ENTRYPOINT ["cleanroom"]
CMD ["--help"]
