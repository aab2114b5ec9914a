# musedrp base image: Debian 12, the real ESO MUSE pipeline, the project's venv.
# Build: make images (docker build -f docker/base.Dockerfile -t musedrp-base:VERSION .)
# Service images (docker/service.Dockerfile) only set which service runs.

FROM debian:12-slim AS runtime
# esorex and the pipeline are pinned; python3 and util-linux (taskset) follow Debian 12
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        esorex=3.13.6* cpl-plugin-muse=2.8.7* python3 util-linux \
 && rm -rf /var/lib/apt/lists/*

FROM runtime AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# dependencies first, read from pyproject.toml, so that code edits keep this layer
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
 && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.txt
COPY shared/ shared/
COPY services/ services/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM runtime
ARG VERSION=0.1.0
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="musedrp" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.description="MUSE raw data reduction services with ESO's pipeline 2.8.7"
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin musedrp \
 && mkdir /scratch && chown 10001:10001 /scratch
# the root filesystem can be read-only: everything written goes to the /scratch volume
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/scratch \
    TMPDIR=/scratch \
    MUSEDRP_SCRATCH=/scratch \
    MUSEDRP_GIT_SHA=${GIT_SHA} \
    MUSEDRP_METRICS_PORT=9100 \
    MUSEDRP_LOG_FORMAT=json \
    MPLCONFIGDIR=/scratch/.matplotlib
VOLUME ["/scratch"]
USER 10001
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s CMD ["musedrp", "health"]
ENTRYPOINT ["musedrp"]
CMD ["--help"]
