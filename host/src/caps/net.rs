//! `net`: name resolution and TCP probes, for the hosts `[net] allow` lists.

use super::{Decision, Grant, Summarize};
use crate::bindings::CapError;
use crate::policy::NetPolicy;
use std::time::{Duration, Instant};

pub struct NetCap {
    pub policy: NetPolicy,
}

impl Summarize for Vec<String> {}

impl NetCap {
    pub fn decide(&self, host: &str, port: Option<u16>) -> Decision {
        match self.policy.allows(host, port) {
            Some(entry) => Decision::Allow(
                Grant::on(
                    "net.allow",
                    self.policy.sandbox,
                    format!("net.allow {entry}"),
                )
                .phases(&self.policy.phases, &None),
            ),
            None => {
                let want = port.map_or(host.to_string(), |p| format!("{host}:{p}"));
                Decision::Deny {
                    needed: format!("net.allow \"{want}\""),
                    message: format!("{want} is not in the policy's [net] allow list"),
                }
            }
        }
    }

    /// Every address `host` resolves to, deduplicated, in resolver order.
    pub async fn resolve(&self, host: &str) -> Result<Vec<String>, CapError> {
        let addrs = tokio::net::lookup_host((host, 0))
            .await
            .map_err(|e| CapError::NotFound(format!("{host} does not resolve: {e}")))?;
        let mut out: Vec<String> = Vec::new();
        for a in addrs {
            let ip = a.ip().to_string();
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        if out.is_empty() {
            return Err(CapError::NotFound(format!("{host} has no addresses")));
        }
        Ok(out)
    }

    /// Connects and closes; the connect time in microseconds.
    pub async fn probe(&self, host: &str, port: u16, timeout: Duration) -> Result<u64, CapError> {
        let start = Instant::now();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
            Ok(Ok(_stream)) => Ok(u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)),
            Ok(Err(e)) => Err(CapError::Unavailable(format!("{host}:{port}: {e}"))),
            Err(_) => Err(CapError::Unavailable(format!(
                "{host}:{port}: no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }
}
