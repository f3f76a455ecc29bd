# Build stage: a release binary with the Rust toolchain image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY openapi.yaml ./
RUN cargo build --release --locked && cp target/release/stamp-relay /usr/local/bin/stamp-relay

# Run stage: just the binary and CA certificates for https upstreams.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/stamp-relay /usr/local/bin/stamp-relay
USER nobody
ENTRYPOINT ["stamp-relay"]
CMD ["serve", "--config", "/etc/stamp-relay/relay.toml"]
