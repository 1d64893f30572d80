# taskstreamd in a container: the Debian packages of debian/, built in a
# first stage, installed in Debian 12 slim; tini as PID 1 reaps the
# children of command tasks and passes SIGTERM on, so the drain works as
# under systemd. deploy/kubernetes/ runs this image.
#   docker build -t taskstream:0.1.0 .
FROM debian:12 AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential debhelper dpkg-dev fakeroot \
      cmake ninja-build pkg-config xxd libjansson-dev uthash-dev libsystemd-dev \
      libhiredis-dev libjwt-dev libssl-dev libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src/taskstream
COPY . .
RUN dpkg-buildpackage -us -uc -b

FROM debian:12-slim
COPY --from=build /src/taskstreamd_*.deb /src/libtaskstream0_*.deb /tmp/
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini /tmp/libtaskstream0_*.deb /tmp/taskstreamd_*.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/*.deb
# The package's user; listen on every interface inside the pod.
USER taskstream
ENV LISTEN=0.0.0.0:8080 ADMIN_LISTEN=0.0.0.0:9090 LOG_FORMAT=json
EXPOSE 8080 9090
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/sbin/taskstreamd"]
