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
STOPSIGNAL SIGTERM
ENTRYPOINT ["misar-webhooks"]
CMD ["run"]
