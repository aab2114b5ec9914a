# musedrp base image: Debian 12, the real ESO MUSE pipeline, the project's venv.
# Stage images differ only in their command (python -m musedrp.services.<stage>).
FROM debian:12-slim

ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="musedrp" \
      org.opencontainers.image.revision="${GIT_SHA}"

# esorex and the pipeline are pinned; python3 and util-linux follow Debian 12's point releases
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        esorex=3.13.6* cpl-plugin-muse=2.8.7* python3 python3-venv util-linux \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin musedrp
WORKDIR /opt/musedrp

# dependencies first, so code edits keep this layer
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir "numpy>=1.26" "astropy>=6.0" "pydantic>=2.6" \
        "sqlalchemy>=2.0" "psycopg[binary]>=3.1" "matplotlib>=3.8"

COPY shared/ shared/
COPY services/ services/
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps .

ENV PATH=/opt/venv/bin:$PATH \
    MUSEDRP_GIT_SHA=${GIT_SHA} \
    MPLCONFIGDIR=/tmp/matplotlib
USER 10001
ENTRYPOINT ["musedrp"]
