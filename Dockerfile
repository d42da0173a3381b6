# misarmail-webhooks: one container beside Postgres.
# The install step is the one tests/integration/test_wheel_install.py proves: a plain `pip install .`
# of a clean checkout (the wheel carries sql/ inside engine/).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --create-home --uid 10001 webhooks
WORKDIR /src

# Dependencies first, so a source change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY engine ./engine
COPY sql ./sql
RUN pip install --no-deps . && rm -rf /src

USER webhooks
WORKDIR /home/webhooks
EXPOSE 8080
# /healthz answers while the process serves; /readyz (database, listener, migrations) is for
# orchestrators that route traffic, which this engine does not receive.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"
# SIGTERM drains: in-flight attempts finish (up to WEBHOOKS_SHUTDOWN_GRACE_S, 15 s by default), so
# give the container a longer stop timeout than that (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["misar-webhooks"]
CMD ["run"]
