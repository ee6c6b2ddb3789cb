# Multi-stage build: the same `go build` the README's commands use, then a
# Debian runtime with a shell (the demo sandbox workload is /bin/sh) and
# Debian's Chromium for the browser service (found on PATH at start).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/gateway ./cmd/gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates chromium \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/nimbus --create-home nimbus
COPY --from=build /out/gateway /usr/local/bin/gateway
# As the unprivileged nimbus user, sandbox workloads run as nimbus too and
# can read the data directory's keys. For untrusted workloads run as root
# with a block of user ids, one per sandbox (docs/security.md):
#   docker run --user root -e NIMBUS_SANDBOX_USER=200000-299999 …
USER nimbus
WORKDIR /var/lib/nimbus
ENV NIMBUS_DATA_DIR=/var/lib/nimbus/data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve"]
