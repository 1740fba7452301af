# syntax=docker/dockerfile:1
# mqgate's container image (multi-stage). Build from the repository root:
#   docker build -t mqgate .          (compose/docker-compose.yml does this for you)
# PostgreSQL queries are checked against the committed `.sqlx/` (SQLX_OFFLINE in
# .cargo/config.toml), so the build needs no database.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mqgate \
 && objcopy --strip-debug target/release/mqgate /mqgate

# Runtime: glibc and nothing else (SQLite is bundled, TLS is rustls): no shell, no package
# manager, a non-root user. The health check is the binary itself (`mqgate health` asks the
# server's /readyz), so no curl is needed either.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /mqgate /usr/local/bin/mqgate
COPY --from=build /src/acl-rules /etc/mqgate/acl-rules
WORKDIR /home/nonroot
ENV MQGATE_LISTEN=0.0.0.0:8080 \
    MQGATE_ACL_RULES_DIR=/etc/mqgate/acl-rules \
    MQGATE_MQTT_ADDR=off
USER nonroot:nonroot
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/mqgate", "health"]
ENTRYPOINT ["/usr/local/bin/mqgate"]
CMD ["serve"]
