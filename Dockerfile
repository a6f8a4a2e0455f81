# Builds the gateway into a small image: docker build -t formid-gateway .
FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: cargo reads every member's manifest and finds its
# targets even to build one package. tests/api/packaging.rs builds from exactly
# these paths, so a new member that is not copied here fails the suite.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY crates crates
COPY bench/Cargo.toml bench/Cargo.toml
COPY bench/src bench/src
# Only the production binary: not the fake WeChat, the demo or the bench.
RUN cargo build --release --locked -p formid-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/formid-gateway /usr/local/bin/formid-gateway
WORKDIR /var/lib/formid-gateway
ENV FORMID__LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nobody
ENTRYPOINT ["formid-gateway"]
CMD ["serve"]
