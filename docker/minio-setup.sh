#!/bin/sh
# One-shot MinIO setup (the minio-setup service): the artifact bucket, its expiry rule, and
# the agents' user, which may read and write that bucket and nothing else.
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
cat > /tmp/artifacts-only.json <<EOF
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow",
     "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
     "Resource": ["arn:aws:s3:::$BUCKET"]},
    {"Effect": "Allow",
     "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts"],
     "Resource": ["arn:aws:s3:::$BUCKET/*"]}
  ]
}
EOF
mc admin policy create local artifacts-only /tmp/artifacts-only.json
mc admin user add local "$MINIO_AGENT_USER" "$MINIO_AGENT_PASSWORD"
# Attaching twice (a second `make server-up`) is refused: the user has it already.
mc admin policy attach local artifacts-only --user "$MINIO_AGENT_USER" || true
