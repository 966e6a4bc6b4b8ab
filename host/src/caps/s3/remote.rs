//! Any S3-compatible endpoint, through aws-sdk-s3.

use super::{
    Backend, BackendError, BoxFut, ObjectMeta, PART_SIZE, Page, Reader, VersionMeta, VersionPage,
};
use crate::policy::S3Grant;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::io::AsyncReadExt;

/// Largest object CopyObject accepts; above it we copy in parts.
const MAX_SINGLE_COPY: u64 = 5 << 30;
/// Part size for server-side multipart copies.
const COPY_PART: u64 = 512 << 20;

/// Characters left as they are in an `x-amz-copy-source`.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub struct S3Bucket {
    client: Client,
    bucket: String,
    store: String,
}

fn sdk_err<E, R>(what: &str, e: SdkError<E, R>) -> BackendError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    BackendError::Unavailable(format!("{what}: {}", DisplayErrorContext(&e)))
}

fn is_404<E, R: HttpStatus>(e: &SdkError<E, R>) -> bool {
    e.raw_response().map(HttpStatus::status_code) == Some(404)
}

/// The status of a raw HTTP response, whatever the SDK calls its type.
trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.and_then(|t| t.to_millis().ok())
        .and_then(|m| u64::try_from(m).ok())
        .unwrap_or(0)
}

fn size(n: Option<i64>) -> u64 {
    n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

impl S3Bucket {
    pub async fn connect(bucket: &str, grant: &S3Grant) -> Result<Self, String> {
        let region = grant.region.clone().unwrap_or_else(|| "us-east-1".into());
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.clone()));
        let mut key_id = String::from("default-chain");
        match (&grant.access_key_id, &grant.secret_access_key) {
            (Some(id), Some(secret)) => {
                let id = id.resolve()?;
                let secret = secret.resolve()?;
                key_id = id.clone();
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "drhost-policy",
                ));
            }
            (None, None) => {}
            _ => return Err("give both access-key-id and secret-access-key, or neither".into()),
        }
        let shared = loader.load().await;
        let mut conf =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(grant.path_style);
        if let Some(endpoint) = &grant.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let store = format!(
            "s3:{}|{region}|{key_id}",
            grant.endpoint.as_deref().unwrap_or("aws")
        );
        Ok(S3Bucket {
            client: Client::from_conf(conf.build()),
            bucket: bucket.to_string(),
            store,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn copy_source(&self, key: &str) -> String {
        utf8_percent_encode(&format!("{}/{key}", self.bucket), COPY_SOURCE).to_string()
    }

    async fn head_meta(&self, key: &str) -> Result<ObjectMeta, BackendError> {
        self.head(key)
            .await?
            .ok_or_else(|| BackendError::NotFound(key.to_string()))
    }

    async fn multipart_upload(
        &self,
        key: &str,
        size: Option<u64>,
        first: Vec<u8>,
        reader: &mut Reader,
    ) -> Result<(), BackendError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("starting upload of {key}"), e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| BackendError::Unavailable("server returned no upload id".into()))?
            .to_string();
        // Crash points after each request: an upload killed anywhere in it.
        crate::crash::point("upload");
        let result = async {
            let mut parts = Vec::new();
            let mut sent = 0u64;
            let mut number = 1;
            // The first read took one byte more than a part: it starts the next.
            let mut carry = first;
            let mut spill = carry.split_off(PART_SIZE.min(carry.len()));
            loop {
                // One part in memory at a time: memory stays at PART_SIZE.
                let mut buf = std::mem::take(&mut carry);
                if buf.is_empty() {
                    buf = Vec::with_capacity(PART_SIZE);
                    buf.append(&mut spill);
                    (&mut *reader)
                        .take((PART_SIZE - buf.len()) as u64)
                        .read_to_end(&mut buf)
                        .await
                        .map_err(|e| {
                            BackendError::Unavailable(format!("reading source of {key}: {e}"))
                        })?;
                }
                if buf.is_empty() {
                    break;
                }
                sent += buf.len() as u64;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .body(ByteStream::from(buf))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("uploading part {number} of {key}"), e))?;
                crate::crash::point("upload");
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_string))
                        .build(),
                );
                number += 1;
            }
            if let Some(size) = size
                && sent != size
            {
                return Err(BackendError::Unavailable(format!(
                    "source of {key} gave {sent} bytes where {size} were expected; upload aborted"
                )));
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_err(&format!("completing upload of {key}"), e))?;
            crate::crash::point("upload");
            Ok(())
        }
        .await;
        if result.is_err() {
            // Nothing may remain visible, nor billed, from a failed upload.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn multipart_copy(
        &self,
        src: &S3Bucket,
        src_key: &str,
        size: u64,
        dst_key: &str,
    ) -> Result<(), BackendError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(dst_key)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("starting copy to {dst_key}"), e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0u64;
            let mut number = 1;
            while offset < size {
                let end = (offset + COPY_PART).min(size) - 1;
                let part = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(dst_key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(src.copy_source(src_key))
                    .copy_source_range(format!("bytes={offset}-{end}"))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("copying part {number} to {dst_key}"), e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(
                            part.copy_part_result()
                                .and_then(|r| r.e_tag())
                                .map(str::to_string),
                        )
                        .build(),
                );
                offset = end + 1;
                number += 1;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(dst_key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| sdk_err(&format!("completing copy to {dst_key}"), e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(dst_key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

impl Backend for S3Bucket {
    fn store_id(&self) -> String {
        self.store.clone()
    }

    fn s3_bucket(&self) -> Option<&S3Bucket> {
        Some(self)
    }

    fn head<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<ObjectMeta>, BackendError>> {
        Box::pin(async move {
            match self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
            {
                Ok(h) => Ok(Some(ObjectMeta {
                    key: key.to_string(),
                    size: size(h.content_length()),
                    etag: h.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                    last_modified_ms: millis(h.last_modified()),
                    version_id: h.version_id().map(str::to_string),
                })),
                Err(e) if is_404(&e) => Ok(None),
                Err(e) => Err(sdk_err(&format!("head {key}"), e)),
            }
        })
    }

    fn open<'a>(
        &'a self,
        key: &'a str,
        version: Option<&'a str>,
    ) -> BoxFut<'a, Result<(ObjectMeta, Reader), BackendError>> {
        Box::pin(async move {
            let resp = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .set_version_id(version.map(str::to_string))
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e)
                    if is_404(&e) || e.as_service_error().is_some_and(|s| s.is_no_such_key()) =>
                {
                    return Err(BackendError::NotFound(match version {
                        Some(v) => format!("{key} version {v}"),
                        None => key.to_string(),
                    }));
                }
                Err(e)
                    if version.is_some()
                        && e.raw_response().map(HttpStatus::status_code) == Some(400) =>
                {
                    return Err(BackendError::NotFound(format!(
                        "{key} version {}",
                        version.unwrap_or_default()
                    )));
                }
                Err(e) => return Err(sdk_err(&format!("get {key}"), e)),
            };
            let meta = ObjectMeta {
                key: key.to_string(),
                size: size(resp.content_length()),
                etag: resp
                    .e_tag()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string(),
                last_modified_ms: millis(resp.last_modified()),
                version_id: resp.version_id().map(str::to_string),
            };
            let reader: Reader = Box::pin(resp.body.into_async_read());
            Ok((meta, reader))
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        body: Vec<u8>,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        Box::pin(async move {
            let len = body.len() as u64;
            let out = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| sdk_err(&format!("put {key}"), e))?;
            crate::crash::point("upload");
            Ok(ObjectMeta {
                key: key.to_string(),
                size: len,
                etag: out
                    .e_tag()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_string(),
                last_modified_ms: crate::clock::now_ms(),
                version_id: out.version_id().map(str::to_string),
            })
        })
    }

    fn put_stream<'a>(
        &'a self,
        key: &'a str,
        size: Option<u64>,
        mut reader: Reader,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        Box::pin(async move {
            // Up to one part decides between a single PUT and a multipart upload.
            let mut first = Vec::with_capacity(
                PART_SIZE.min(size.map_or(PART_SIZE, |s| usize::try_from(s).unwrap_or(PART_SIZE))),
            );
            (&mut reader)
                .take(PART_SIZE as u64 + 1)
                .read_to_end(&mut first)
                .await
                .map_err(|e| BackendError::Unavailable(format!("reading source of {key}: {e}")))?;
            if first.len() <= PART_SIZE {
                if let Some(s) = size
                    && first.len() as u64 != s
                {
                    return Err(BackendError::Unavailable(format!(
                        "source of {key} gave {} bytes where {s} were expected; nothing was written",
                        first.len()
                    )));
                }
                return self.put(key, first).await;
            }
            self.multipart_upload(key, size, first, &mut reader).await?;
            self.head_meta(key).await
        })
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max: u32,
    ) -> BoxFut<'a, Result<Page, BackendError>> {
        Box::pin(async move {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.map(str::to_string))
                .max_keys(i32::try_from(max).unwrap_or(1000))
                .send()
                .await
                .map_err(|e| sdk_err(&format!("list {prefix}"), e))?;
            let objects = out
                .contents()
                .iter()
                .map(|o| ObjectMeta {
                    key: o.key().unwrap_or_default().to_string(),
                    size: size(o.size()),
                    etag: o.e_tag().unwrap_or_default().trim_matches('"').to_string(),
                    last_modified_ms: millis(o.last_modified()),
                    version_id: None,
                })
                .collect();
            let next_token = if out.is_truncated().unwrap_or(false) {
                out.next_continuation_token().map(str::to_string)
            } else {
                None
            };
            Ok(Page {
                objects,
                next_token,
            })
        })
    }

    fn list_versions<'a>(
        &'a self,
        prefix: &'a str,
        token: Option<&'a str>,
        max: u32,
    ) -> BoxFut<'a, Result<VersionPage, BackendError>> {
        Box::pin(async move {
            let (key_marker, version_marker) = match token.and_then(|t| t.rsplit_once('\n')) {
                Some((k, v)) => (
                    Some(k.to_string()),
                    Some(v.to_string()).filter(|v| !v.is_empty()),
                ),
                None => (None, None),
            };
            let out = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_marker)
                .max_keys(i32::try_from(max).unwrap_or(1000))
                .send()
                .await
                .map_err(|e| sdk_err(&format!("list versions {prefix}"), e))?;
            let mut versions: Vec<VersionMeta> = out
                .versions()
                .iter()
                .map(|v| VersionMeta {
                    key: v.key().unwrap_or_default().to_string(),
                    version_id: v.version_id().unwrap_or("null").to_string(),
                    size: size(v.size()),
                    last_modified_ms: millis(v.last_modified()),
                    is_latest: v.is_latest().unwrap_or(false),
                    delete_marker: false,
                })
                .chain(out.delete_markers().iter().map(|d| VersionMeta {
                    key: d.key().unwrap_or_default().to_string(),
                    version_id: d.version_id().unwrap_or("null").to_string(),
                    size: 0,
                    last_modified_ms: millis(d.last_modified()),
                    is_latest: d.is_latest().unwrap_or(false),
                    delete_marker: true,
                }))
                .collect();
            versions.sort_by(|a, b| {
                a.key
                    .cmp(&b.key)
                    .then(b.last_modified_ms.cmp(&a.last_modified_ms))
            });
            let next_token = if out.is_truncated().unwrap_or(false) {
                Some(format!(
                    "{}\n{}",
                    out.next_key_marker().unwrap_or_default(),
                    out.next_version_id_marker().unwrap_or_default()
                ))
            } else {
                None
            };
            Ok(VersionPage {
                versions,
                next_token,
            })
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| sdk_err(&format!("delete {key}"), e))?;
            Ok(())
        })
    }

    fn sweep_leftovers<'a>(
        &'a self,
        prefix: &'a str,
        before_ms: u64,
        dry_run: bool,
    ) -> BoxFut<'a, Result<Vec<String>, BackendError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
            loop {
                let page = self
                    .client
                    .list_multipart_uploads()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("listing the uploads under {prefix}"), e))?;
                for u in page.uploads() {
                    let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                        continue;
                    };
                    let started = u
                        .initiated()
                        .and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
                        .unwrap_or(u64::MAX);
                    if started >= before_ms {
                        continue;
                    }
                    if !dry_run {
                        self.client
                            .abort_multipart_upload()
                            .bucket(&self.bucket)
                            .key(key)
                            .upload_id(id)
                            .send()
                            .await
                            .map_err(|e| sdk_err(&format!("aborting the upload of {key}"), e))?;
                    }
                    out.push(format!("{key} (upload {id})"));
                }
                if page.is_truncated() != Some(true) {
                    return Ok(out);
                }
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
            }
        })
    }

    fn copy_within<'a>(
        &'a self,
        src_key: &'a str,
        dst_key: &'a str,
        dst: &'a dyn Backend,
    ) -> BoxFut<'a, Result<ObjectMeta, BackendError>> {
        Box::pin(async move {
            let Some(dst_bucket) = dst.s3_bucket() else {
                let (meta, reader) = self.open(src_key, None).await?;
                return dst.put_stream(dst_key, Some(meta.size), reader).await;
            };
            let src = self.head_meta(src_key).await?;
            if src.size > MAX_SINGLE_COPY {
                dst_bucket
                    .multipart_copy(self, src_key, src.size, dst_key)
                    .await?;
            } else {
                dst_bucket
                    .client
                    .copy_object()
                    .bucket(&dst_bucket.bucket)
                    .key(dst_key)
                    .copy_source(self.copy_source(src_key))
                    .send()
                    .await
                    .map_err(|e| sdk_err(&format!("copy {src_key} to {dst_key}"), e))?;
            }
            dst_bucket.head_meta(dst_key).await
        })
    }
}
