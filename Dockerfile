# The deploykit action image: Debian trixie, Python 3, and the docker CLI with the buildx
# and compose v2 plugins (Debian trixie's docker-cli, docker-buildx, docker-compose).
#
# The base is an ARG because some machines cannot pull from Docker Hub; build FROM a local
# Debian trixie image there (it needs apt sources; python3 may already be installed):
#   docker build --build-arg BASE_IMAGE=127.0.0.1:5000/testbed/python:3-trixie -t deploykit .
# Releases are built multi-arch by .github/workflows/release.yml and published to GHCR, so
# users of a release tag never build this file.
ARG BASE_IMAGE=debian:trixie-slim

# Stage 1: a virtualenv with the locked dependencies and the deploykit package.
FROM ${BASE_IMAGE} AS venv
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# Extra CAs (ca-certificates/*.crt, usually none) join the system store, which pip uses.
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
COPY requirements.lock /src/requirements.lock
RUN python3 -m venv /opt/deploykit \
 && /opt/deploykit/bin/pip install --no-deps -r /src/requirements.lock
COPY pyproject.toml README.md /src/
COPY deploykit /src/deploykit
# setuptools is pinned and removed again with pip: the image needs neither at run time.
RUN /opt/deploykit/bin/pip install --no-deps setuptools==80.9.0 \
 && /opt/deploykit/bin/pip install --no-deps --no-build-isolation /src \
 && /opt/deploykit/bin/pip uninstall -y setuptools pip \
 && /opt/deploykit/bin/deploykit --version

# Stage 2: the runtime, with only Python, the docker CLI plugins and the virtualenv.
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 ca-certificates docker-cli docker-buildx docker-compose openssh-client \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /usr/share/doc/* /usr/share/man/* \
 && docker buildx version \
 && docker compose version \
 && ssh -V
COPY --from=venv /opt/deploykit /opt/deploykit
COPY entrypoint.py /app/entrypoint.py
ENV PATH=/opt/deploykit/bin:$PATH \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# No USER: GitHub runs container actions as root, with the workspace and docker socket mounted.
ENTRYPOINT ["/opt/deploykit/bin/python", "/app/entrypoint.py"]
