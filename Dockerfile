# taskstreamd in a container: the Debian packages of debian/, built in a
# first stage, installed in Debian 12 slim; tini as PID 1 reaps the
# children of command tasks and passes SIGTERM on, so the drain works as
# under systemd. deploy/kubernetes/ runs this image.
#   docker build -t taskstream:0.1.0 .     (or buildah bud; tests/e2e/test_image.py)
FROM debian:12 AS build
WORKDIR /src/taskstream
COPY debian/control debian/control
# The build dependencies are debian/control's, not a second list here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential dpkg-dev fakeroot \
 && apt-get build-dep -y --no-install-recommends ./ \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN dpkg-buildpackage -us -uc -b

FROM debian:12-slim
# The package's user, made first with a fixed id (postinst keeps an
# existing one), so USER is numeric and Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 65532 taskstream \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent \
      --no-create-home --shell /usr/sbin/nologin taskstream
COPY --from=build /src/taskstreamd_*.deb /src/libtaskstream0_*.deb /tmp/
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini /tmp/libtaskstream0_*.deb /tmp/taskstreamd_*.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/*.deb
USER 65532:65532
# Listen on every interface inside the pod; the rest is
# /etc/taskstream/taskstream.env's defaults, given here as the environment
# because no systemd reads that file in a container.
ENV LISTEN=0.0.0.0:8080 ADMIN_LISTEN=0.0.0.0:9090 LOG_FORMAT=json \
    COMMANDS_FILE=/etc/taskstream/commands.json KINDS=command
EXPOSE 8080 9090
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/sbin/taskstreamd"]
