# The stitcher service. Debian's ffmpeg conditions ad creatives; the app runs as a
# non-root user and reads its channels from /etc/stitcher.yaml.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY manifests ./manifests
COPY stitcher ./stitcher
COPY fixtures ./fixtures
RUN pip install --no-cache-dir ".[fast]"
RUN useradd --system --home /var/lib/stitcher stitcher \
 && mkdir -p /var/lib/stitcher && chown stitcher /var/lib/stitcher
USER stitcher
WORKDIR /var/lib/stitcher
EXPOSE 8080
CMD ["stitcher", "serve", "--config", "/etc/stitcher.yaml"]
