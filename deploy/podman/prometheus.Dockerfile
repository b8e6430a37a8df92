# A stand-in for the compose file's Prometheus image where its registry cannot be reached:
# Debian's own `prometheus` package on the Debian base the other images use. Built and tagged
# with the compose file's image name by tests/containers.py; Docker users pull the real one.
ARG BASE=python:3.11.10-slim-bookworm
FROM ${BASE}
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && install --directory --owner nobody --group nogroup /prometheus
# As the real image: unprivileged, its data under /prometheus, the binary as entry point.
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
