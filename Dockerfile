# latchkey container image: static-ish release binary on Debian slim, non-root.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY bench bench
COPY tests tests
RUN cargo build --release --locked --bin latchkey

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/latchkey --shell /usr/sbin/nologin latchkey \
 && mkdir -p /var/lib/latchkey/data /var/lib/latchkey/keys /var/lib/latchkey/audit \
 && chown -R latchkey:latchkey /var/lib/latchkey \
 && chmod 0700 /var/lib/latchkey/data /var/lib/latchkey/keys /var/lib/latchkey/audit
COPY --from=build /src/target/release/latchkey /usr/local/bin/latchkey
USER latchkey
WORKDIR /var/lib/latchkey
ENV LATCHKEY_DATA_DIR=/var/lib/latchkey/data \
    LATCHKEY_KEYS_DIR=/var/lib/latchkey/keys \
    LATCHKEY_BIND=0.0.0.0:8200 \
    LATCHKEY_LOG_FORMAT=json
EXPOSE 8200
VOLUME ["/var/lib/latchkey/data", "/var/lib/latchkey/keys", "/var/lib/latchkey/audit"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["latchkey", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["latchkey"]
CMD ["serve"]
