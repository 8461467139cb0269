# syntax=docker/dockerfile:1

# ---- build ----
FROM golang:1.26-bookworm AS build
WORKDIR /src
# Module downloads are cached in their own layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /tlsproxy ./cmd/tlsproxy

# ---- run ----
# Static, shell-less, non-root (uid/gid 65532) base image.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tlsproxy /tlsproxy

# No configuration, keys or certificates are baked into the image. Mount them:
#   docker run --rm -p 127.0.0.1:6380:6380 \
#     -v "$PWD/config.yaml:/etc/tlsproxy/config.yaml:ro" \
#     -v "$PWD/certs:/etc/tlsproxy/certs:ro" \
#     tlsproxy
# The config file goes to /etc/tlsproxy/config.yaml; mount the certificate
# directory as a (read-only) volume and point the config's paths at it.
# Note: inside a container the proxy must listen on 0.0.0.0 (set in the
# mounted config) for the published port to reach it.
USER 65532:65532
EXPOSE 6380
# The admin endpoint (admin.address; loopback by default: set 0.0.0.0:9180 in
# the mounted config to publish it, on loopback only, as deploy/compose does).
EXPOSE 9180
# The image has no shell tools: the binary checks itself (GET /healthz).
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/tlsproxy", "health", "--config", "/etc/tlsproxy/config.yaml"]
ENTRYPOINT ["/tlsproxy"]
CMD ["run", "--config", "/etc/tlsproxy/config.yaml"]
