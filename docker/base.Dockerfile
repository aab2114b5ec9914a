# musedrp base image: Debian 12, the real ESO MUSE pipeline, the project's venv.
# Build: make images (docker/images.sh: docker, or podman with a locally made Debian base).
# Service images (docker/service.Dockerfile) only set which service runs.
#
# Layers, largest first, changing least often first: the pipeline (Debian packages), the
# locked Python dependencies (/opt/venv), the project's code (/opt/app, found through a .pth
# file).  A code edit rebuilds the last one only; no compiler or pip in the final image.

FROM debian:12-slim AS runtime
# esorex and the pipeline are pinned; python3 and util-linux (taskset) follow Debian 12
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        esorex=3.13.6* cpl-plugin-muse=2.8.7* python3 util-linux \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/* \
 && useradd --uid 10001 --no-create-home --home-dir /scratch --shell /usr/sbin/nologin musedrp \
 && mkdir /scratch && chown 10001:10001 /scratch

FROM runtime AS deps
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# the CA bundle pip should use, where docker/images.sh mounts it (podman builds); unset: pip's own
ARG PIP_CERT
# exactly as locked (versions and hashes: two builds of one commit hold the same packages), by
# a pip outside the venv; regenerate the lock with
# pip-compile --generate-hashes --strip-extras -o docker/requirements.lock pyproject.toml
COPY docker/requirements.lock ./
RUN python3 -m venv /opt/pip \
 && python3 -m venv --without-pip /opt/venv \
 && /opt/pip/bin/pip --python /opt/venv/bin/python install --no-cache-dir --require-hashes \
        --no-deps -r requirements.lock \
 && find /opt/venv -depth -type d -name tests -path '*/site-packages/*/*/tests' -exec rm -rf {} + \
 && echo /opt/app > "$(/opt/venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/musedrp-app.pth"

FROM deps AS build
ARG PIP_CERT
COPY pyproject.toml ./
COPY shared/ shared/
COPY services/ services/
RUN /opt/pip/bin/pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        --target /opt/app .

FROM runtime
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /opt/app /opt/app
# the root filesystem can be read-only: everything written goes to the /scratch volume
ENV PATH=/opt/app/bin:/opt/venv/bin:$PATH \
    HOME=/scratch \
    TMPDIR=/scratch \
    MUSEDRP_SCRATCH=/scratch \
    MUSEDRP_METRICS_PORT=9100 \
    MUSEDRP_LOG_FORMAT=json \
    MPLCONFIGDIR=/scratch/.matplotlib
ARG VERSION=0.1.0
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="musedrp" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_SHA}" \
      org.opencontainers.image.description="MUSE raw data reduction services with ESO's pipeline 2.8.7"
ENV MUSEDRP_GIT_SHA=${GIT_SHA}
VOLUME ["/scratch"]
USER 10001
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s CMD ["musedrp", "health"]
ENTRYPOINT ["musedrp"]
CMD ["--help"]
