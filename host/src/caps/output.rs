//! Guest stdout/stderr: kept in memory up to a cap, then dropped and counted,
//! so a chatty plugin can neither fill the host's memory nor trap because its
//! writes failed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

#[derive(Default)]
struct Buffer {
    kept: Vec<u8>,
    dropped: u64,
}

/// A bounded sink for guest output.
#[derive(Clone)]
pub struct CappedOutput {
    cap: usize,
    buf: Arc<Mutex<Buffer>>,
}

impl CappedOutput {
    pub fn new(cap: usize) -> Self {
        CappedOutput {
            cap,
            buf: Arc::default(),
        }
    }

    /// Takes what was written so far: the kept bytes and how many were dropped.
    pub fn take(&self) -> (Vec<u8>, u64) {
        match self.buf.lock() {
            Ok(mut b) => (std::mem::take(&mut b.kept), std::mem::take(&mut b.dropped)),
            Err(_) => (Vec::new(), 0),
        }
    }
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Ok(mut b) = self.buf.lock() {
            let room = self.cap.saturating_sub(b.kept.len());
            let keep = room.min(data.len());
            b.kept.extend_from_slice(&data[..keep]);
            b.dropped += (data.len() - keep) as u64;
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}
