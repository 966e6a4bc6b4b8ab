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
    pub grant: String,
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
        let grant = format!("http.allow {}", entry.text);
        if let Some(ip) = literal {
            return Ok(Target {
                pin: Some(SocketAddr::new(ip, port)),
                grant,
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
        })
    }
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
                    if scheme == "http"
                        && let Some(pin) = t.pin
                    {
                        // Connect to the address we checked, not to a second lookup.
                        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                        if let Ok(u) = http::Uri::builder()
                            .scheme("http")
                            .authority(pin.to_string())
                            .path_and_query(pq)
                            .build()
                        {
                            *request.uri_mut() = u;
                        }
                    }
                    // The entry is a sandbox one when `[http] sandbox` lists it too.
                    let sandbox = caps
                        .http
                        .policy
                        .sandbox
                        .iter()
                        .any(|u| format!("http.allow {}", u.text) == t.grant);
                    let p = &caps.http.policy;
                    Decision::Allow(
                        Grant::on("http.allow", sandbox, t.grant)
                            .phases(&p.phases, &p.write_phases),
                    )
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
