//! Blocking HTTP requests over `wasi:http/outgoing-handler`.
//!
//! The host only lets requests through to URLs on the policy's allow-list;
//! a refused request comes back as an error naming the URL.

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// A response with its whole body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `url`.
pub fn get(url: &str) -> Result<Response, String> {
    request("GET", url, &[], None)
}

/// POST `body` to `url` with a content type.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, String> {
    request(
        "POST",
        url,
        &[("content-type", content_type.as_bytes())],
        Some(body),
    )
}

/// POSTs to a URL that may drop the connection instead of answering (a
/// service told to crash or shut down: what drills inject). Only a policy
/// denial is an error; any answer, or none, is success.
pub fn post_expecting_hangup(url: &str) -> Result<(), String> {
    match post(url, "text/plain", b"") {
        Err(e) if e.contains("denied by the policy") => Err(e),
        _ => Ok(()),
    }
}

/// Sends one request and reads the whole response.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value)
            .map_err(|e| format!("header {name}: {e:?}"))?;
    }
    // A known length instead of chunked encoding, which simple servers
    // (and some APIs) do not accept.
    if let Some(bytes) = body
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        fields
            .append("content-length", bytes.len().to_string().as_bytes())
            .map_err(|e| format!("header content-length: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        "PATCH" => Method::Patch,
        other => Method::Other(other.to_string()),
    };
    let set = |ok: Result<(), ()>, what: &str| ok.map_err(|()| format!("invalid {what} in {url}"));
    set(req.set_method(&method), "method")?;
    set(req.set_scheme(Some(&scheme)), "scheme")?;
    set(req.set_authority(Some(authority)), "authority")?;
    set(req.set_path_with_query(Some(path)), "path")?;

    let out_body = req
        .body()
        .map_err(|()| "request body taken twice".to_string())?;
    let pending = outgoing_handler::handle(req, None).map_err(|e| describe(url, &e))?;
    {
        let stream = out_body
            .write()
            .map_err(|()| "request body stream taken twice".to_string())?;
        if let Some(bytes) = body {
            for chunk in bytes.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| format!("writing request body: {e:?}"))?;
            }
        }
    }
    OutgoingBody::finish(out_body, None).map_err(|e| describe(url, &e))?;

    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(describe(url, &e)),
        Some(Err(())) => return Err("response already taken".into()),
        None => return Err("response not ready".into()),
    };
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| "response body taken twice".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| "response stream taken twice".to_string())?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(format!("reading {url}: {}", e.to_debug_string()));
                }
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body: bytes,
    })
}

fn describe(url: &str, e: &ErrorCode) -> String {
    match e {
        ErrorCode::HttpRequestDenied => {
            format!("request to {url} denied by the policy (add it to [http] allow)")
        }
        ErrorCode::InternalError(Some(m)) => format!("request to {url} failed: {m}"),
        other => format!("request to {url} failed: {other:?}"),
    }
}

/// Splits `scheme://authority/path?query` without pulling in a URL crate.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("not an absolute URL: {url}"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("unsupported scheme {other} in {url}")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("no host in {url}"));
    }
    Ok((scheme, authority, path))
}
