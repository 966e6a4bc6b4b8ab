//! `/health` and `/metrics`.

use super::Daemon;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    daemon: Arc<Daemon>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/health" => {
            let (ok, body) = daemon.health().await;
            reply(
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                "application/json",
                body,
            )
        }
        "/metrics" => match daemon.metrics_text().await {
            Ok(text) => reply(StatusCode::OK, "text/plain; version=0.0.4", text),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("state store unavailable: {e}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "drhost serve: /health, /metrics\n".into(),
        ),
    })
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(daemon.clone(), req));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("http connection: {e}");
            }
        });
    }
}
