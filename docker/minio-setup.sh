#!/bin/sh
# One-shot MinIO setup (the minio-setup service): the artifact bucket and its expiry rule.
set -eu
until mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  echo "waiting for minio..."
  sleep 2
done
mc mb --ignore-existing "local/$BUCKET"
if ! mc ilm rule ls "local/$BUCKET" 2>/dev/null | grep -q "$PREFIX/"; then
  mc ilm rule add --prefix "$PREFIX/" --expire-days "$RETENTION_DAYS" "local/$BUCKET"
fi
mc ilm rule ls "local/$BUCKET"
