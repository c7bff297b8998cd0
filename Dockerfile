# The scope image: one container running a probe and an app (`scope`), started by ./launch.sh as a privileged
# container in the host's network, PID and cgroup namespaces with the Docker socket mounted.
#
# Build it with scripts/build-image.sh rather than by hand. There is no registry to pull from, so the base
# is a Debian bookworm rootfs made with debootstrap (python3, python3-venv, ca-certificates, conntrack,
# iproute2, procps) and loaded with `docker import`; and pip inside a build cannot reach the package index,
# so the Python packages come from the wheelhouse the script builds on the host (.wheelhouse/, the only
# thing .dockerignore lets into the context) and are installed with --no-index.
ARG BASE_IMAGE=scope-local/debian-python:bookworm
FROM ${BASE_IMAGE}

# A venv: Debian's python3 is "externally managed" and refuses a system-wide pip install.
RUN python3 -m venv /opt/scope

# The dependencies first, in their own layer: rebuilt only when the dependency wheels change.
COPY .wheelhouse/deps/ /wheels/deps/
RUN /opt/scope/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check /wheels/deps/*.whl

COPY .wheelhouse/scope/ /wheels/scope/
RUN /opt/scope/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /wheels/deps /wheels/scope/*.whl \
    && /opt/scope/bin/pip check \
    && /opt/scope/bin/scope --version

ENV PATH=/opt/scope/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Arguments are scope's: flags, then the peers (apps) the probe publishes to besides the local app.
ENTRYPOINT ["scope"]
