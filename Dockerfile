# Builds the gateway into a small image: docker build -t formid-gateway .
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/formid-gateway /usr/local/bin/formid-gateway
WORKDIR /var/lib/formid-gateway
ENV FORMID__LISTEN=0.0.0.0:8080
EXPOSE 8080
USER nobody
ENTRYPOINT ["formid-gateway"]
CMD ["serve"]
