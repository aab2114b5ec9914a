# One image per service, from the base: docker build -f docker/service.Dockerfile
#   --build-arg BASE=musedrp-base:VERSION --build-arg SERVICE=bias -t musedrp-bias:VERSION .
ARG BASE=musedrp-base:0.1.0
FROM ${BASE}
ARG SERVICE=bias
LABEL org.opencontainers.image.title="musedrp-${SERVICE}"
ENV MUSEDRP_SERVICE=${SERVICE}
CMD ["service"]
