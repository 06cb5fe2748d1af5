//! Object-storage locations (`s3://`, `gs://`, `az://`) through the `object_store` crate.
//!
//! The object is streamed to a temporary file, chunk by chunk, and then read like a local file:
//! memory stays bounded whatever the object's size, and the CSV and Parquet adapters have one
//! code path. Configuration comes from the environment, as every S3 tool reads it:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` (an S3-compatible server), `AWS_ALLOW_HTTP=true` (plain HTTP, e.g. a
//! server on loopback); `GOOGLE_*` and `AZURE_*` likewise for the other schemes.

use std::io::Write;

use futures_util::StreamExt;

use crate::ReadError;

/// Downloads the object at `url` into a temporary file, removed when the returned path is
/// dropped. Runs its own single-threaded runtime on a separate thread, so it can be called
/// from synchronous code and from inside an asynchronous runtime alike.
pub(crate) fn download(url: &str) -> Result<tempfile::TempPath, ReadError> {
    let remote = |message: String| ReadError::Remote {
        location: url.to_owned(),
        message,
    };
    let parsed = url::Url::parse(url).map_err(|e| remote(format!("not a URL: {e}")))?;
    let options: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            ["AWS_", "GOOGLE_", "AZURE_"]
                .iter()
                .any(|prefix| k.starts_with(prefix))
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let (store, path) =
        object_store::parse_url_opts(&parsed, options).map_err(|e| remote(e.to_string()))?;
    let temp = tempfile::Builder::new()
        .prefix("cleanroom-object-")
        .tempfile()
        .map_err(|source| ReadError::Io {
            location: url.to_owned(),
            source,
        })?;
    let (mut file, temp_path) = temp.into_parts();
    let copied = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let object = store.get(&path).await.map_err(|e| e.to_string())?;
                    let mut chunks = object.into_stream();
                    while let Some(chunk) = chunks.next().await {
                        let chunk = chunk.map_err(|e| e.to_string())?;
                        file.write_all(&chunk).map_err(|e| e.to_string())?;
                    }
                    file.flush().map_err(|e| e.to_string())
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the download thread panicked".to_owned()))
    });
    copied.map_err(remote)?;
    Ok(temp_path)
}
