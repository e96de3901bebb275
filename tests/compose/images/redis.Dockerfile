# Test stand-in for redis:7 on a machine without a registry: Debian 12's Redis 7 on the offline base,
# running as `redis` in /data like the official image (the command comes from docker-compose.yml).
ARG BASE_IMAGE=local/bookworm-base
FROM ${BASE_IMAGE}
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; \
    rm -rf /var/lib/apt/lists/*; \
    mkdir -p /data; \
    chown redis:redis /data
USER redis
WORKDIR /data
CMD ["redis-server"]
