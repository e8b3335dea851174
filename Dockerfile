# The minimaldask image for people who prefer `docker buildx build`.
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 \
#       --build-arg PYTHON=3.13 -t REPOSITORY:TAG .
#
# The build stage runs on the build machine's own platform and assembles the
# target's root filesystem with `minimaldask image build --rootfs`, without
# emulation; the final stage copies it into an empty image. BUILDER_IMAGE is
# any Debian-based image with python3 and python3-venv. Prefer the builder
# itself (`minimaldask image build --push`): it records the dask, distributed
# and Python versions as labels, which a Dockerfile cannot know in advance.
ARG BUILDER_IMAGE=python:3.11-slim-bookworm
ARG BUILDPLATFORM
FROM --platform=$BUILDPLATFORM ${BUILDER_IMAGE} AS build
ARG TARGETPLATFORM
ARG PYTHON=""
ARG FLAVOR=default
ARG DASK=""
ARG DEBIAN_MIRROR=""
ARG SOURCE_DATE_EPOCH=0
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python3 -m venv /opt/builder \
 && /opt/builder/bin/pip install --quiet --no-cache-dir /src \
 && /opt/builder/bin/python -m minimaldask.image build \
        --platform "${TARGETPLATFORM:-linux/amd64}" --flavor "$FLAVOR" \
        ${PYTHON:+--python "$PYTHON"} ${DASK:+--dask "$DASK"} \
        ${DEBIAN_MIRROR:+--debian-mirror "$DEBIAN_MIRROR"} \
        --rootfs /rootfs

FROM scratch
COPY --from=build /rootfs /
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    HOME=/home/dask \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    MINIMALDASK_PREFIX=/tmp/minimaldask
USER 1000:1000
WORKDIR /home/dask
EXPOSE 8786 8787
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/bin/python3", "-m", "minimaldask.pod.entrypoint"]
