# Build stage: compile klink with the same toolchain family the project uses.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The manifest names these targets and the patched kafka-protocol.
COPY vendor ./vendor
COPY src ./src
COPY proto-tests ./proto-tests
COPY benches ./benches
RUN cargo build --release --locked --bin klink

# Runtime stage: just the binary. Mount the config at /etc/klink/klink.toml
# and a volume at the config's state_dir so virtual broker ids survive.
FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/klink klink \
    && mkdir -p /etc/klink /var/lib/klink \
    && chown klink /var/lib/klink
COPY --from=build /src/target/release/klink /usr/local/bin/klink
USER klink
WORKDIR /var/lib/klink
ENTRYPOINT ["klink"]
CMD ["proxy", "--config", "/etc/klink/klink.toml"]
