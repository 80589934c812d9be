# The demo's SCIM 2.0 application: the tests' scim2-server app (tests/support/scim_app.py), in
# memory, under gunicorn. Built on its own so the provisioner's image holds no test server.
#   docker build -f docker/demo/scim.Dockerfile -t scim-provisioner-demo-scim .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir "scim2-server==0.8.3" "gunicorn>=22" "joserfc>=1"
RUN useradd --create-home --uid 10001 scim
WORKDIR /app
COPY tests/__init__.py ./tests/__init__.py
COPY tests/support ./tests/support

USER scim
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--worker-class", "gthread", "--threads", "8", "tests.support.scim_app:create_app()"]
