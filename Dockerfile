FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md celeryconfig.py ./
COPY sessions ./sessions
COPY tasks ./tasks
COPY workers ./workers
COPY bridges ./bridges
COPY cli ./cli
# EXTRAS=sim adds what the local simulator needs (the `openai` package, for its strict checks);
# the production image leaves it out.
ARG EXTRAS=""
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --create-home --uid 1000 opus \
    && mkdir -p /var/lib/opus/archive \
    && chown -R opus /var/lib/opus

USER opus
ENV ARCHIVE_DIR=/var/lib/opus/archive
