# syntax=docker/dockerfile:1
# akwatch, built from this repository (the build context is trimmed by .dockerignore).
#   docker build --build-arg AKWATCH_REVISION=$(git rev-parse --short=12 HEAD) -t akwatch .
#   docker run --rm -v $PWD/akwatch.yaml:/etc/akwatch/akwatch.yaml:ro -p 127.0.0.1:9464:9464 akwatch
# The container runs as the unprivileged user akwatch (uid and gid 10001), which owns the state
# directory /var/lib/akwatch; rules are in /etc/akwatch/rules, the bundled scenario in
# /usr/share/akwatch/examples. Its health is `akwatch probe` on the ops port's /healthz, so the
# configuration must serve it on 127.0.0.1:9464 (ops_addr: 0.0.0.0:9464 or 127.0.0.1:9464).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The commit akwatch_build_info reports (build.rs; the context has no .git). Empty: "unknown".
ARG AKWATCH_REVISION=
# The cargo registry and target directory are build caches (BuildKit), so a rebuild after an
# edit compiles only what changed; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin akwatch \
    && install -D -m 0755 target/release/akwatch /out/akwatch

FROM debian:bookworm-slim
ARG AKWATCH_REVISION=
LABEL org.opencontainers.image.title="akwatch" \
      org.opencontainers.image.description="Real-time access-key anomaly detection for AWS CloudTrail, Alibaba Cloud ActionTrail and Tencent Cloud CloudAudit" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${AKWATCH_REVISION}"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 akwatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/akwatch --no-create-home \
       --shell /usr/sbin/nologin akwatch \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/akwatch
COPY --from=build /out/akwatch /usr/local/bin/akwatch
COPY rules /etc/akwatch/rules
COPY examples /usr/share/akwatch/examples
WORKDIR /etc/akwatch
# /var/lib/akwatch is the state directory (state_dir): a named volume mounted there starts
# owned by akwatch (Docker copies the image directory's owner into a new volume).
USER 10001:10001
EXPOSE 9464
# Exits 0 when GET /healthz answers 2xx.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["akwatch", "probe", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["akwatch"]
CMD ["run", "--config", "/etc/akwatch/akwatch.yaml"]
