# syntax=docker/dockerfile:1
# The bot as a container image. `docker compose up -d` (compose.yaml) builds and runs it; README.md,
# "Running in Docker", gives the plain `docker build` / `docker run` commands too.

# Build stage: install the project into a virtualenv exactly as README's run command does
# (`pip install .`, no test extra). Every dependency, Pillow included, ships manylinux wheels:
# no compiler is needed, and none of this stage but the virtualenv reaches the image.
# The base is pinned to a patch release (what python:3.11-slim was when pinned, on Debian 13
# trixie), so a rebuild takes a new Python or Debian only when this line changes. Both stages
# name the same one: the virtualenv runs on the build stage's interpreter.
FROM python:3.11.17-slim-trixie AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN /opt/venv/bin/pip install -q .

# Runtime stage: the virtualenv, run by an unprivileged user.
FROM python:3.11.17-slim-trixie
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# DATABASE_URL defaults to sqlite:///data/bot.sqlite3, a path relative to WORKDIR: the jobs live
# in /app/data, a volume that the bot's user owns (a new named volume takes that ownership).
RUN groupadd --system --gid 10001 bot \
    && useradd --system --uid 10001 --gid bot --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin bot \
    && mkdir -p /app/data \
    && chown bot:bot /app/data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER bot
VOLUME ["/app/data"]
# The listener (callbacks and /healthz) binds HOST:PORT, 0.0.0.0:8080 unless set otherwise.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import json, os, urllib.request as r; u = 'http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'); raise SystemExit(0 if json.load(r.urlopen(u, timeout=4)).get('ok') else 1)"]
# SIGTERM (docker stop) lets posts under way finish for up to 8 s, then the bot exits 0.
CMD ["python", "-m", "bot"]
