# One image for every service module of the lab (Compose mode, see docker-compose.yml).
# A compose service names its module as its command:  command: ["katas.infra.webhook_receiver"]
# and reads every endpoint from KATAS_* variables (compose/katas.env), exactly as under `katas up`.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 katas \
 && useradd --system --uid 10001 --gid katas --home-dir /var/lib/katas --shell /usr/sbin/nologin katas \
 && mkdir -p /var/lib/katas/service /var/lib/katas/run \
 && chown -R katas:katas /var/lib/katas

WORKDIR /src

# 1. Third-party dependencies only, from the lock: this layer is rebuilt only when pyproject.toml or
#    constraints.txt change, not on every edit of the lab's code. Empty packages stand in for the sources.
COPY pyproject.toml constraints.txt ./
RUN mkdir katas loadgen \
 && touch katas/__init__.py loadgen/__init__.py \
 && pip install -c constraints.txt . \
 && pip uninstall --yes kata-lab \
 && rm -rf katas loadgen build ./*.egg-info

# 2. The project itself (not editable: the image carries no checkout). README.md is not copied: only the
#    package metadata refers to it, and setuptools builds without it.
COPY katas ./katas
COPY loadgen ./loadgen
RUN pip install -c constraints.txt . \
 && cd / && rm -rf /src

# /var/lib/katas/service: the private working directory of each container (a service writes its own
# endpoints.json there, as in its folder of the run directory natively).
# /var/lib/katas/run: mount point of the shared `katas-run` volume, exported as KATAS_KATA_RUN_DIR.
WORKDIR /var/lib/katas/service
USER katas:katas

ENTRYPOINT ["python", "-m"]
# Without a command the image lists the katas; compose services always name their module.
CMD ["katas.cli", "list"]
