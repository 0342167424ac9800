# akwatch, built from this repository.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin akwatch

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/akwatch /usr/local/bin/akwatch
COPY rules /etc/akwatch/rules
COPY examples /usr/share/akwatch/examples
WORKDIR /etc/akwatch
EXPOSE 9464
ENTRYPOINT ["akwatch"]
CMD ["run", "--config", "/etc/akwatch/akwatch.yaml"]
