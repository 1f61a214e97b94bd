//! Backups to and from S3-compatible object storage, through `object_store`.
//!
//! The endpoint, region and credentials come from the usual AWS environment variables
//! (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP` for a plain-HTTP endpoint such as a local test server). A backup is made
//! to a local file first (consistent, checked), then uploaded as a multipart upload, which
//! leaves no object behind unless it completes. A restore downloads to a file beside the
//! journal, checks it, and puts it in place.

use super::backup::{Copied, backup, restore};
use crate::Error;
use object_store::{
    ObjectStoreExt, RetryConfig, WriteMultipart,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path as ObjectPath,
};
use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

/// Size of one part of a multipart upload.
const PART: usize = 8 << 20;

/// Where a backup goes or comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    S3 { bucket: String, key: String },
}

impl Location {
    /// A path, or `s3://bucket/key`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
                return Err(Error::BadLocation {
                    location: text.to_owned(),
                    detail:
                        "name the bucket and the object, like s3://backups/colony/2026-11-21.db"
                            .into(),
                });
            }
            return Ok(Location::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            });
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(Error::BadLocation {
                location: text.to_owned(),
                detail: format!("{scheme}:// is not supported: give a file path or an s3:// URL"),
            });
        }
        Ok(Location::File(PathBuf::from(text)))
    }

    fn shown(&self) -> String {
        match self {
            Location::File(path) => path.display().to_string(),
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// Backs the journal at `db` up to `to`.
pub async fn backup_to(db: &Path, to: &Location) -> Result<Copied, Error> {
    match to {
        Location::File(path) => {
            let (db, path) = (db.to_owned(), path.clone());
            blocking(move || backup(&db, &path)).await
        }
        Location::S3 { bucket, key } => {
            let store = store(bucket, to)?;
            let staged = sibling(db, ".upload");
            let (source, file) = (db.to_owned(), staged.clone());
            let mut copied = blocking(move || backup(&source, &file)).await?;
            let uploaded = upload(&store, &staged, key, to).await;
            let _ = tokio::fs::remove_file(&staged).await;
            uploaded?;
            copied.to = to.shown();
            Ok(copied)
        }
    }
}

/// Restores the backup at `from` as the journal `db` (see [`restore`]).
pub async fn restore_from(from: &Location, db: &Path, replace: bool) -> Result<Copied, Error> {
    match from {
        Location::File(path) => {
            let (path, db) = (path.clone(), db.to_owned());
            blocking(move || restore(&path, &db, replace)).await
        }
        Location::S3 { bucket, key } => {
            if db.exists() && !replace {
                return Err(Error::Exists {
                    path: db.display().to_string(),
                });
            }
            let store = store(bucket, from)?;
            let staged = sibling(db, ".download");
            let downloaded = download(&store, key, &staged, from).await;
            let result = match downloaded {
                Ok(()) => {
                    let (file, target) = (staged.clone(), db.to_owned());
                    blocking(move || restore(&file, &target, replace)).await
                }
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&staged);
            let mut copied = result?;
            copied.from = from.shown();
            Ok(copied)
        }
    }
}

fn store(bucket: &str, location: &Location) -> Result<AmazonS3, Error> {
    // Fail within seconds when the endpoint cannot be reached, not after minutes of retries.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(20),
        ..RetryConfig::default()
    };
    AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .build()
        .map_err(|e| remote(location, e))
}

async fn upload(
    store: &AmazonS3,
    file: &Path,
    key: &str,
    location: &Location,
) -> Result<(), Error> {
    let path = ObjectPath::from(key);
    let upload = store
        .put_multipart(&path)
        .await
        .map_err(|e| remote(location, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    // Read with tokio's file, whose reads run on the blocking pool: this runs on a server's
    // worker threads too (`colony serve --backup-to s3://`).
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|e| Error::Storage(format!("{}: {e}", file.display())))?;
    let mut buffer = vec![0u8; PART];
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut input, &mut buffer).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(Error::Storage(format!("{}: {e}", file.display())));
            }
        };
        if let Err(e) = writer.wait_for_capacity(4).await {
            let _ = writer.abort().await;
            return Err(remote(location, e));
        }
        writer.write(&buffer[..n]);
    }
    writer.finish().await.map_err(|e| remote(location, e))?;
    Ok(())
}

async fn download(
    store: &AmazonS3,
    key: &str,
    file: &Path,
    location: &Location,
) -> Result<(), Error> {
    use futures::StreamExt;
    let got = store
        .get(&ObjectPath::from(key))
        .await
        .map_err(|e| remote(location, e))?;
    let mut stream = got.into_stream();
    let io = |e: std::io::Error| Error::Storage(format!("{}: {e}", file.display()));
    let mut output = std::fs::File::create(file).map_err(io)?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| remote(location, e))?;
        output.write_all(&chunk).map_err(io)?;
    }
    output.sync_all().map_err(io)?;
    Ok(())
}

fn remote(location: &Location, error: object_store::Error) -> Error {
    let detail = match &error {
        object_store::Error::NotFound { .. } => "no such object (or bucket)".to_owned(),
        other => {
            // The deepest source says what went wrong (connection refused, access denied);
            // the layers above it repeat the request.
            let mut root: &dyn std::error::Error = other;
            while let Some(source) = root.source() {
                root = source;
            }
            root.to_string()
        }
    };
    Error::Remote {
        location: location.shown(),
        detail,
    }
}

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("the copy stopped: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("/tmp/x.db").unwrap(),
            Location::File("/tmp/x.db".into())
        );
        assert_eq!(
            Location::parse("s3://bucket/a/b.db").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                key: "a/b.db".into()
            }
        );
        for bad in ["s3://bucket", "s3://bucket/", "s3:///key", "s3://b/dir/"] {
            assert!(
                matches!(Location::parse(bad), Err(Error::BadLocation { .. })),
                "{bad}"
            );
        }
        let err = Location::parse("gs://bucket/x").unwrap_err().to_string();
        assert!(err.contains("gs:// is not supported"), "{err}");
    }
}
