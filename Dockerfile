# The etcd-defrag-agent image: the static binary of `make build` and nothing
# else: no shell, no package manager, no libc, no writable path.
#
#   make image                  # make build, then docker build -t etcd-defrag-agent:$(VERSION) .
#   make test-image             # builds it and runs it (scripts/test-image.sh)
#
# The binary is built outside (CGO_ENABLED=0, -trimpath, -ldflags "-s -w
# -X main.version=..."), so the build needs no base image and works offline.
# For another architecture build the binary with GOARCH first; see the README
# ("Deploying", "Image").
FROM scratch

# ARG before FROM would not reach this stage.
ARG VERSION=devel

LABEL org.opencontainers.image.title="etcd-defrag-agent" \
      org.opencontainers.image.description="Defragments the etcd member it runs beside, one member of the cluster at a time, the leader last" \
      org.opencontainers.image.source="https://github.com/etcd-defrag-agent/etcd-defrag-agent" \
      org.opencontainers.image.version="${VERSION}"

# go build writes it 0755; COPY keeps the mode (--chmod would need BuildKit).
COPY bin/etcd-defrag-agent /etcd-defrag-agent

# A numeric user, so that runAsNonRoot can check it without an /etc/passwd.
USER 65532:65532

# /metrics, /healthz, /readyz, /status (--web.listen-address).
EXPOSE 9479

ENTRYPOINT ["/etcd-defrag-agent"]
