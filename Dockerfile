FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md celeryconfig.py ./
COPY sessions ./sessions
COPY tasks ./tasks
COPY workers ./workers
COPY bridges ./bridges
COPY cli ./cli
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 1000 opus \
    && mkdir -p /var/lib/opus/archive \
    && chown -R opus /var/lib/opus

USER opus
ENV ARCHIVE_DIR=/var/lib/opus/archive
