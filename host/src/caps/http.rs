//! The `http` capability: wasi:http outgoing requests, allowed only to the
//! policy's `[http] allow` list.
//!
//! Once wasi:http is linked, egress is open unless `send_request` refuses it,
//! so every request is decided here: the URL must fall under an allow entry
//! (scheme, host, port, path prefix); a host *name* must resolve only to
//! public addresses or to ranges listed in `[http] addresses`; an IP literal
//! must itself be listed. For plain HTTP the connection goes to the address
//! that was checked (no second DNS lookup to race). Responses are capped.
//! Redirects are not followed by the host: a guest that follows one makes a
//! new request, which is checked like any other.
//!
//! Paths are normalised before they are matched (see [`normalize_path`]) and
//! the request that leaves is rebuilt from the normalised path, so what a
//! server receives is exactly what the allow list was checked against.

use crate::caps::{Call, Caps, Decision, Grant};
use crate::policy::HttpPolicy;
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub struct HttpCap {
    pub policy: HttpPolicy,
    pub max_response_bytes: u64,
}

/// Where a request would go, once allowed.
#[derive(Debug)]
pub struct Target {
    /// The address to connect to, pinned for plain HTTP.
    pub pin: Option<SocketAddr>,
    /// The allow entry that matched, as the gate decides from it.
    pub grant: Grant,
    /// The normalised path that was matched: the one to send.
    pub path: String,
}

/// Why a request path is refused before any allow entry is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path {0:?} does not start with '/'")]
    NotAbsolute(String),
    #[error(
        "the path {path:?} contains {what}, which servers read differently; send the plain, unencoded form"
    )]
    Ambiguous { path: String, what: &'static str },
}

/// Percent-decodes `%XX` escapes; `None` when one is malformed.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// One segment in canonical form: escapes of unreserved characters
/// (RFC 3986 2.3) decoded, the others kept with uppercase hex. Refuses what
/// some server could read as a separator, a dot segment or a string end.
fn canonical_segment(path: &str, seg: &str) -> Result<String, PathError> {
    let amb = |what| PathError::Ambiguous {
        path: path.to_string(),
        what,
    };
    let mut out = String::with_capacity(seg.len());
    let mut rest = seg;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let hex = rest
            .get(i + 1..i + 3)
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| amb("a '%' that does not start an escape"))?;
        let byte = u8::from_str_radix(hex, 16).map_err(|_| amb("a malformed escape"))?;
        match byte {
            b'/' => return Err(amb("an encoded '/' (%2F)")),
            b'\\' => return Err(amb("an encoded '\\' (%5C)")),
            // A lenient server decodes twice: %252e becomes '.'.
            b'%' => return Err(amb("an encoded '%' (%25, double encoding)")),
            b'\0' => return Err(amb("an encoded NUL (%00)")),
            b if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(b))
            }
            _ => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if (out == "." || out == "..") && seg != out {
        return Err(amb("a percent-encoded dot segment (%2e)"));
    }
    // What the segment means once every escape is decoded (the only
    // remaining escapes are of reserved and non-ASCII bytes).
    let decoded = percent_decode(&out).ok_or_else(|| amb("a malformed escape"))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| amb("percent-encoded bytes that are not UTF-8 (e.g. an overlong '.')"))?;
    if decoded.chars().any(crate::caps::s3::keys::invisible) {
        return Err(amb("a control or invisible character"));
    }
    if decoded.chars().any(crate::caps::s3::keys::is_lookalike) {
        return Err(amb("a character that imitates '/', '\\' or '.'"));
    }
    if decoded.contains('\\') {
        return Err(amb("a backslash"));
    }
    // Servers that take `;params` off a segment (Tomcat, Jetty) see
    // `/health/;/..` as `/health//..`, which leaves the grant: refuse path
    // parameters, plain or encoded, rather than guess how each server reads them.
    if decoded.contains(';') {
        return Err(amb("a ';' (path parameters)"));
    }
    use unicode_normalization::UnicodeNormalization;
    if decoded.nfkc().ne(decoded.chars()) {
        return Err(amb("Unicode that is not in NFKC (e.g. a fullwidth '.')"));
    }
    // `..;x` is `..` to Tomcat, `.. ` and `...` to Windows: only the plain
    // `.` and `..` are dot segments, and they are resolved by the caller.
    let head = decoded.split(';').next().unwrap_or_default();
    if out != "." && out != ".." && !head.is_empty() && head.chars().all(|c| c == '.' || c == ' ') {
        return Err(amb(
            "a segment of only dots and spaces, which some servers read as '..'",
        ));
    }
    Ok(out)
}

/// Normalises a request path (no query) before it is matched: `.` and `..`
/// resolved as RFC 3986 5.2.4 says, escapes of unreserved characters decoded,
/// the other escapes upper-cased. Anything a server could read otherwise is
/// refused rather than guessed at: encoded `/`, `\`, `%` and NUL, encoded dot
/// segments, backslashes, empty segments (`//`, kept only at the end as a
/// trailing `/`), control and invisible characters, non-NFKC Unicode and
/// look-alikes of `/` and `.`.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if path.is_empty() {
        return Ok("/".into());
    }
    let Some(body) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute(path.to_string()));
    };
    let amb = |what| PathError::Ambiguous {
        path: path.to_string(),
        what,
    };
    if path.contains('\\') {
        return Err(amb("a backslash"));
    }
    if path.chars().any(crate::caps::s3::keys::invisible) {
        return Err(amb("a control or invisible character"));
    }
    let segs: Vec<&str> = body.split('/').collect();
    let last = segs.len() - 1;
    let mut out: Vec<String> = Vec::with_capacity(segs.len());
    for (i, seg) in segs.iter().enumerate() {
        let seg = canonical_segment(path, seg)?;
        match seg.as_str() {
            "." | ".." => {
                if seg == ".." {
                    out.pop();
                }
                // `/a/b/..` is `/a/`: a final dot segment leaves a directory.
                if i == last {
                    out.push(String::new());
                }
            }
            "" if i != last => return Err(amb("an empty segment ('//')")),
            _ => out.push(seg),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// Whether an address is public unicast (what a listed host name may resolve to by default).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

impl HttpCap {
    /// Decides a request to `scheme://host:port/path`, resolving names.
    pub async fn decide(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<Target, String> {
        let path = normalize_path(path)
            .map_err(|e| format!("{scheme}://{host}:{port}: {e}; the request is refused"))?;
        let path = path.as_str();
        let host_lc = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let literal: Option<IpAddr> = host_lc.parse().ok();
        let entry = self
            .policy
            .allow
            .iter()
            .find(|e| {
                let host_matches = match (literal, e.is_ip) {
                    (Some(ip), true) => e.host.parse::<IpAddr>().ok() == Some(ip),
                    (None, false) => e.host == host_lc,
                    _ => false,
                };
                host_matches && e.matches(scheme, &e.host, port, path)
            })
            .ok_or_else(|| {
                let url = format!("{scheme}://{host}:{port}{path}");
                if literal.is_some() && self.policy.allow.iter().any(|e| !e.is_ip) {
                    format!("{url} is not on the [http] allow list (an IP address must be listed as itself, not through a host name)")
                } else {
                    format!("{url} is not on the [http] allow list")
                }
            })?;
        // A sandbox entry (a drill's inject steps may call it) is one that
        // `[http] sandbox` lists as well.
        let p = &self.policy;
        let sandbox = p.sandbox.iter().any(|s| s.text == entry.text);
        let grant = Grant::on("http.allow", sandbox, format!("http.allow {}", entry.text))
            .phases(&p.phases, &p.write_phases);
        if let Some(ip) = literal {
            return Ok(Target {
                pin: Some(SocketAddr::new(ip, port)),
                grant,
                path: path.to_string(),
            });
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host_lc.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolved to no address"));
        }
        for a in &addrs {
            let ip = a.ip();
            if !is_public(ip) && !self.policy.addresses.iter().any(|n| n.contains(ip)) {
                return Err(format!(
                    "{host} resolved to {ip}, which is not a public address nor in [http] addresses; list the range there if {host} really lives at {ip}"
                ));
            }
        }
        Ok(Target {
            pin: Some(addrs[0]),
            grant,
            path: path.to_string(),
        })
    }
}

/// The URI a request is sent with: the normalised path that was matched and
/// the query as given; for plain HTTP the authority is the address that was
/// checked, so no second lookup can redirect the connection.
pub fn outgoing_uri(uri: &http::Uri, scheme: &str, t: &Target) -> Result<http::Uri, String> {
    let authority = match t.pin {
        Some(pin) if scheme == "http" => pin.to_string(),
        _ => uri
            .authority()
            .map(|a| a.as_str().to_string())
            .ok_or("the URL has no host")?,
    };
    let pq = match uri.query() {
        Some(q) => format!("{}?{q}", t.path),
        None => t.path.clone(),
    };
    http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map_err(|e| e.to_string())
}

/// The wasi:http hooks of one store: every request goes through the gate.
pub struct Hooks {
    pub caps: Arc<Caps>,
}

type ResponseFuture = Box<
    dyn std::future::Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let _ = fut;
        let caps = Arc::clone(&self.caps);
        Box::new(async move {
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "https" { 443 } else { 80 });
            let path = uri.path().to_string();
            let url = format!("{scheme}://{host}:{port}{path}");
            let mut call = Call::new("http", "request", url.clone())
                .arg("method", request.method().as_str())
                .arg("url", uri.to_string());
            if !matches!(request.method().as_str(), "GET" | "HEAD" | "OPTIONS") {
                call = call.mutating();
            }
            let decision = match caps.http.decide(&scheme, &host, port, &path).await {
                Ok(t) => {
                    let built = outgoing_uri(&uri, &scheme, &t);
                    match built {
                        Ok(u) => {
                            if t.path != path {
                                call = call.arg("sent-path", t.path.as_str());
                            }
                            *request.uri_mut() = u;
                            Decision::Allow(t.grant)
                        }
                        Err(e) => Decision::Deny {
                            needed: format!("http.allow \"{scheme}://{host}:{port}{path}\""),
                            message: format!("cannot rebuild the request URL {url}: {e}"),
                        },
                    }
                }
                Err(message) => Decision::Deny {
                    needed: format!("http.allow \"{scheme}://{host}:{port}{path}\""),
                    message,
                },
            };
            let max = caps.http.max_response_bytes;
            let mut denied = false;
            let result = caps
                .gate
                .call(call, decision, || async {
                    let (resp, io) = wasmtime_wasi_http::default_send_request(request, options)
                        .await
                        .map_err(|e| crate::bindings::CapError::Unavailable(e.to_string()))?;
                    Ok(HttpResponse {
                        status: resp.status().as_u16(),
                        resp: Some((
                            resp.map(|b| CappedBody::new(b.boxed_unsync(), max).boxed_unsync()),
                            Box::new(io)
                                as Box<
                                    dyn std::future::Future<Output = Result<(), HttpError>> + Send,
                                >,
                        )),
                    })
                })
                .await
                .map_err(|e| {
                    denied = matches!(e, crate::bindings::CapError::Denied(_));
                    e
                });
            match result {
                Ok(mut r) => r.resp.take().ok_or(HttpError::InternalError(None)),
                Err(_) if denied => Err(HttpError::HttpRequestDenied),
                Err(crate::bindings::CapError::Planned(m)) => {
                    Err(HttpError::InternalError(Some(m)))
                }
                Err(e) => Err(HttpError::InternalError(Some(crate::caps::error_text(&e)))),
            }
        })
    }
}

struct HttpResponse {
    status: u16,
    #[allow(clippy::type_complexity)]
    resp: Option<(
        http::Response<WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), HttpError>> + Send>,
    )>,
}

impl crate::caps::Summarize for HttpResponse {
    fn moved(&self) -> crate::caps::Moved {
        let mut m = crate::caps::Moved::default();
        m.extra.insert("status".into(), self.status.into());
        m
    }
}

/// A response body that fails once it passes `max` bytes.
struct CappedBody {
    inner: WasiBody,
    seen: u64,
    max: u64,
}

impl CappedBody {
    fn new(inner: WasiBody, max: u64) -> Self {
        CappedBody {
            inner,
            seen: 0,
            max,
        }
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.max {
                        tracing::warn!("HTTP response body over {} bytes: cut off", this.max);
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.seen,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn cap(toml: &str) -> HttpCap {
        let p = Policy::parse(toml).unwrap();
        HttpCap {
            max_response_bytes: p.max_response_bytes(),
            policy: p.http,
        }
    }

    #[tokio::test]
    async fn listed_ip_is_allowed_and_others_are_not() {
        let c = cap("[http]\nallow = [\"http://127.0.0.1:8080/health\"]\n");
        assert!(c.decide("http", "127.0.0.1", 8080, "/health").await.is_ok());
        assert!(c.decide("http", "127.0.0.1", 8080, "/admin").await.is_err());
        assert!(
            c.decide("http", "127.0.0.2", 8080, "/health")
                .await
                .is_err()
        );
        assert!(
            c.decide("https", "127.0.0.1", 8080, "/health")
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_needs_the_range_listed() {
        let c = cap("[http]\nallow = [\"http://localhost:8080/\"]\n");
        let err = c.decide("http", "localhost", 8080, "/").await.unwrap_err();
        assert!(err.contains("not a public address"), "{err}");
        let c = cap(
            "[http]\nallow = [\"http://localhost:8080/\"]\naddresses = [\"127.0.0.0/8\", \"::1\"]\n",
        );
        assert!(c.decide("http", "localhost", 8080, "/").await.is_ok());
    }

    #[tokio::test]
    async fn an_ip_literal_does_not_ride_on_a_name_rule() {
        let c =
            cap("[http]\nallow = [\"http://localhost:8080/\"]\naddresses = [\"127.0.0.0/8\"]\n");
        let err = c.decide("http", "127.0.0.1", 8080, "/").await.unwrap_err();
        assert!(err.contains("must be listed as itself"), "{err}");
    }

    const HEALTH: &str = "[http]\nallow = [\"http://127.0.0.1:8080/health\"]\n";

    #[tokio::test]
    async fn path_tricks_do_not_leave_the_grant() {
        let c = cap(HEALTH);
        for p in [
            // Found by the property test: `;params` stripped by the server.
            "/health/;/..",
            "/health/x;/../..",
            "/health/..%3b/admin",
            "/health/a;b",
            "/health/../admin",
            "/health/%2e%2e/admin",
            "/health/..%2fadmin",
            "/health/%2E%2E/admin",
            "//health/x",
            "/health//x",
            "/health/.%2e/admin",
            "/health/%2e./admin",
            "/health/%2e/x",
            "/health\\..\\admin",
            "/health/..%5cadmin",
            "/health/%252e%252e/admin",
            "/health/%252f",
            "/health/..;/admin",
            "/health/%2e%2e;x/admin",
            "/health/..%3b/admin",
            "/health/.../admin",
            "/health/..%20/admin",
            "/health/%00/x",
            "/health/a%0ab",
            "/health/%c0%ae%c0%ae/admin",    // overlong UTF-8 '.'
            "/health/%ef%bc%8e%ef%bc%8e/x",  // fullwidth '.'
            "/health/%e2%88%95..%e2%88%95x", // division slash
            "/health/%",
            "/health/%zz",
            "health",
        ] {
            let err = c.decide("http", "127.0.0.1", 8080, p).await.unwrap_err();
            assert!(
                err.contains("not on the [http] allow list") || err.contains("refused"),
                "{p}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn the_allowed_path_is_the_normalised_one() {
        let c = cap(HEALTH);
        for (asked, sent) in [
            ("/health", "/health"),
            ("/health/", "/health/"),
            ("/health/db", "/health/db"),
            ("/health/x/../db", "/health/db"),
            ("/health/./db", "/health/db"),
            ("/health/db/..", "/health/"),
            ("/admin/../health/db", "/health/db"),
            ("/../health", "/health"),
            ("/health/%7euser/%41", "/health/~user/A"),
            ("/health/a%2cb%3d", "/health/a%2Cb%3D"),
            ("/health/caf%C3%A9", "/health/caf%C3%A9"),
        ] {
            let t = c.decide("http", "127.0.0.1", 8080, asked).await.unwrap();
            assert_eq!(t.path, sent, "{asked}");
        }
    }

    #[tokio::test]
    async fn prefixes_match_whole_segments() {
        let c = cap(HEALTH);
        for p in ["/healthz", "/health-admin", "/health.json", "/healt", "/"] {
            assert!(c.decide("http", "127.0.0.1", 8080, p).await.is_err(), "{p}");
        }
        let c = cap("[http]\nallow = [\"http://127.0.0.1:8080/health/\"]\n");
        assert!(
            c.decide("http", "127.0.0.1", 8080, "/health/x")
                .await
                .is_ok()
        );
        assert!(
            c.decide("http", "127.0.0.1", 8080, "/health/")
                .await
                .is_ok()
        );
        assert!(
            c.decide("http", "127.0.0.1", 8080, "/health")
                .await
                .is_err()
        );
        assert!(
            c.decide("http", "127.0.0.1", 8080, "/healthz")
                .await
                .is_err()
        );
    }

    #[test]
    fn grants_are_normalised_like_requests() {
        let p = Policy::parse("[http]\nallow = [\"http://h/a/%7Eb/./c/../d\"]\n").unwrap();
        assert_eq!(p.http.allow[0].path_prefix, "/a/~b/d");
        let err = Policy::parse("[http]\nallow = [\"http://h/a%2fb\"]\n").unwrap_err();
        assert!(err.contains("%2F"), "{err}");
    }

    #[tokio::test]
    async fn the_request_sent_carries_the_matched_path_and_the_query_as_given() {
        let c = cap(HEALTH);
        let uri: http::Uri = "http://127.0.0.1:8080/health/x/../db?next=../../admin&p=%2e%2e"
            .parse()
            .unwrap();
        let t = c
            .decide("http", "127.0.0.1", 8080, uri.path())
            .await
            .unwrap();
        let out = outgoing_uri(&uri, "http", &t).unwrap();
        assert_eq!(
            out.to_string(),
            "http://127.0.0.1:8080/health/db?next=../../admin&p=%2e%2e"
        );
        // The query plays no part in matching.
        let uri: http::Uri = "http://127.0.0.1:8080/admin?/health".parse().unwrap();
        assert!(
            c.decide("http", "127.0.0.1", 8080, uri.path())
                .await
                .is_err()
        );
    }

    /// What a lenient server makes of a path: escapes decoded until nothing
    /// changes, `\` read as `/`, `;params` dropped, dot segments resolved,
    /// empty segments collapsed.
    fn lenient(path: &str) -> Vec<String> {
        let mut p = path.to_string();
        for _ in 0..8 {
            let d = percent_encoding::percent_decode_str(&p)
                .decode_utf8_lossy()
                .into_owned();
            if d == p {
                break;
            }
            p = d;
        }
        let mut out: Vec<String> = Vec::new();
        for seg in p.replace('\\', "/").split('/') {
            let seg = seg
                .split(';')
                .next()
                .unwrap_or_default()
                .trim_end_matches([' ', '\0']);
            match seg {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                s if s.chars().all(|c| c == '.') => {
                    out.pop();
                }
                s => out.push(s.to_string()),
            }
        }
        out
    }

    fn under_health(segs: &[String]) -> bool {
        segs.first().is_some_and(|s| s == "health")
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn whatever_is_allowed_stays_under_the_grant_for_a_lenient_server(
            segs in proptest::collection::vec(
                proptest::sample::select(vec![
                    "..", ".", "%2e", "%2E", "%2e%2e", ".%2e", "%2f", "%2F", "%5c", "\\",
                    "", "a", "health", "admin", "healthz", "%252e", "%252f", "%25",
                    "..;", ";", "%3b", "%00", "...", "%c0%ae", "%41", "x%2e",
                ]),
                0..8,
            ),
        ) {
            let path = format!("/{}", segs.join("/"));
            let grant = crate::policy::AllowedUrl::parse("http://h/health").unwrap();
            if let Ok(n) = normalize_path(&path)
                && grant.matches("http", "h", 80, &n)
            {
                proptest::prop_assert!(under_health(&lenient(&n)), "{path} -> {n}");
                proptest::prop_assert!(under_health(&lenient(&path)), "{path} -> {n}");
                proptest::prop_assert_eq!(normalize_path(&n).ok(), Some(n.clone()));
            }
        }
    }

    #[test]
    fn public_addresses() {
        assert!(is_public("8.8.8.8".parse().unwrap()));
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
    }
}
