# One image for the API server and the Celery worker (no torch: the trainer runs on GPU machines).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libvulkan1 libomp5 libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dspo dspo
COPY annotation_server annotation_server
COPY worker worker
COPY trainer trainer
COPY migrations migrations
RUN pip install --no-cache-dir ".[realesrgan]"
ENV DSPO_STORAGE_ROOT=/data/blobs
CMD ["dspo", "serve", "--host", "0.0.0.0"]
