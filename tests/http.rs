//! Outgoing HTTP through wasi:http against a real local server: the
//! allow-list, addresses, redirects and the response cap.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A small HTTP/1.1 server: /health → 200, /redirect → 302 to another
/// host, /big → 2 MiB. Returns its port.
async fn server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(m) => n += m,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, extra, body): (&str, String, Vec<u8>) = match path.as_str() {
                    "/health" => ("200 OK", String::new(), b"ok".to_vec()),
                    "/redirect" => (
                        "302 Found",
                        format!("Location: http://127.0.0.2:{port}/health\r\n"),
                        Vec::new(),
                    ),
                    "/big" => ("200 OK", String::new(), vec![b'x'; 2 << 20]),
                    _ => ("404 Not Found", String::new(), b"no".to_vec()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    port
}

fn allow(entries: &[String], extra: &str) -> String {
    let list: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
    format!("[http]\nallow = [{}]\n{extra}", list.join(", "))
}

#[tokio::test]
async fn a_listed_url_is_reached_and_recorded() {
    let port = server().await;
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &allow(&[format!("http://127.0.0.1:{port}/health")], ""),
        dir.path(),
    )
    .await;
    let f = ok(
        &caps,
        "http.get",
        &[("url", &format!("http://127.0.0.1:{port}/health"))],
    )
    .await;
    assert_eq!(get(&f, "status"), Some("200"));
    assert_eq!(get(&f, "body"), Some("ok"));
    flush(&caps);
    let calls: Vec<_> = audit_records(dir.path())
        .into_iter()
        .filter(|r| r["interface"] == "http")
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["decision"], "allow");
    assert_eq!(calls[0]["status"], 200);
}

#[tokio::test]
async fn unlisted_paths_ports_and_hosts_are_denied() {
    let port = server().await;
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &allow(&[format!("http://127.0.0.1:{port}/health")], ""),
        dir.path(),
    )
    .await;
    for url in [
        format!("http://127.0.0.1:{port}/admin"),
        format!("http://127.0.0.1:{port}/healthz"),
        format!("http://127.0.0.2:{port}/health"),
        format!("http://127.0.0.1:{}/health", port.wrapping_add(1)),
    ] {
        let err = failed(&caps, "http.get", &[("url", &url)]).await;
        assert!(err.contains("denied by the policy"), "{url}: {err}");
    }
    flush(&caps);
    let denied = audit_records(dir.path())
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .count();
    assert_eq!(denied, 4);
}

#[tokio::test]
async fn a_redirect_to_an_unlisted_host_is_not_followed() {
    let port = server().await;
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &allow(&[format!("http://127.0.0.1:{port}/redirect")], ""),
        dir.path(),
    )
    .await;
    let f = ok(
        &caps,
        "http.get",
        &[("url", &format!("http://127.0.0.1:{port}/redirect"))],
    )
    .await;
    assert_eq!(get(&f, "status"), Some("302"));
    // The guest may try to follow it; that is a new request, and it is denied.
    let location = get(&f, "location").unwrap().to_string();
    let err = failed(&caps, "http.get", &[("url", &location)]).await;
    assert!(err.contains("denied"), "{err}");
}

#[tokio::test]
async fn a_name_resolving_to_an_unlisted_address_is_denied() {
    let port = server().await;
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &allow(&[format!("http://localhost:{port}/")], ""),
        dir.path(),
    )
    .await;
    let err = failed(
        &caps,
        "http.get",
        &[("url", &format!("http://localhost:{port}/health"))],
    )
    .await;
    assert!(err.contains("denied"), "{err}");
    flush(&caps);
    let rec = audit_records(dir.path())
        .into_iter()
        .find(|r| r["decision"] == "deny")
        .unwrap();
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("not a public address"),
        "{rec:?}"
    );
    // Listing the range lets the same name through.
    let dir2 = tempfile::tempdir().unwrap();
    let caps2 = common::caps(
        &allow(
            &[format!("http://localhost:{port}/")],
            "addresses = [\"127.0.0.0/8\", \"::1\"]\n",
        ),
        dir2.path(),
    )
    .await;
    let f = ok(
        &caps2,
        "http.get",
        &[("url", &format!("http://localhost:{port}/health"))],
    )
    .await;
    assert_eq!(get(&f, "status"), Some("200"));
}

#[tokio::test]
async fn an_ip_literal_cannot_dodge_a_name_rule() {
    let port = server().await;
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &allow(
            &[format!("http://localhost:{port}/")],
            "addresses = [\"127.0.0.0/8\"]\n",
        ),
        dir.path(),
    )
    .await;
    let err = failed(
        &caps,
        "http.get",
        &[("url", &format!("http://127.0.0.1:{port}/health"))],
    )
    .await;
    assert!(err.contains("denied"), "{err}");
}

#[tokio::test]
async fn a_response_over_the_cap_is_cut_off() {
    let port = server().await;
    let dir = tempfile::tempdir().unwrap();
    let caps = caps(
        &allow(
            &[format!("http://127.0.0.1:{port}/")],
            "max-response-bytes = \"64 KiB\"\n",
        ),
        dir.path(),
    )
    .await;
    let err = failed(
        &caps,
        "http.get",
        &[("url", &format!("http://127.0.0.1:{port}/big"))],
    )
    .await;
    assert!(err.contains("reading"), "{err}");
}
