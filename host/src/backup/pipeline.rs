//! The byte pipeline, both ways, with bounded memory:
//! plaintext → sha256 → zstd → age → sha256 → every target at once, and
//! object → sha256 → age → zstd → sha256 → a sink (a file or a restore tool).
//!
//! The codecs are synchronous and run on a blocking thread; uploads are async
//! tasks fed through bounded channels, so a slow target slows the dump instead
//! of filling memory.

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Size of the chunks handed to uploads.
pub const CHUNK: usize = 1 << 20;
/// Chunks in flight per target: memory per target is about CHUNK * DEPTH.
const DEPTH: usize = 4;
/// Read buffer of the codec loops.
const BUF: usize = 256 << 10;

/// The age file header's first line: how "encrypted" is checked from the bytes.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// A running sha256 and byte count, shareable between a codec and its owner.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<(Sha256, u64)>>);

impl Tally {
    fn add(&self, bytes: &[u8]) {
        if let Ok(mut t) = self.0.lock() {
            t.0.update(bytes);
            t.1 += bytes.len() as u64;
        }
    }

    /// (size, sha256 hex) of everything seen so far.
    pub fn result(&self) -> (u64, String) {
        match self.0.lock() {
            Ok(t) => (t.1, hex::encode(t.0.clone().finalize())),
            Err(_) => (0, String::new()),
        }
    }
}

/// Hashes what is read through it.
pub struct TallyReader<R> {
    inner: R,
    tally: Tally,
}

impl<R: Read> TallyReader<R> {
    pub fn new(inner: R, tally: Tally) -> Self {
        TallyReader { inner, tally }
    }
}

impl<R: Read> Read for TallyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }
}

/// Hashes what is written through it.
pub struct TallyWriter<W> {
    inner: W,
    tally: Tally,
}

impl<W: Write> Write for TallyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Chunk = io::Result<Bytes>;

/// Writes to several targets at once. A target whose upload has ended early
/// (its receiver is gone) is dropped; the others go on. Unless `finish` is
/// called, every receiver sees an error rather than an end of stream, so an
/// abandoned pipeline can never complete an upload.
pub struct FanOut {
    senders: Vec<Option<mpsc::Sender<Chunk>>>,
    buf: BytesMut,
    finished: bool,
}

impl FanOut {
    /// One sender and one reader per target.
    pub fn new(targets: usize) -> (Self, Vec<crate::caps::s3::Reader>) {
        let mut senders = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..targets {
            let (tx, rx) = mpsc::channel::<Chunk>(DEPTH);
            senders.push(Some(tx));
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            readers.push(
                Box::pin(tokio_util::io::StreamReader::new(Box::pin(stream)))
                    as crate::caps::s3::Reader,
            );
        }
        let fan = FanOut {
            senders,
            buf: BytesMut::with_capacity(CHUNK),
            finished: false,
        };
        (fan, readers)
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // One point per chunk: a backup killed after any number of them.
        crate::crash::point("backup-create");
        let chunk = self.buf.split().freeze();
        for slot in &mut self.senders {
            if let Some(tx) = slot
                && tx.blocking_send(Ok(chunk.clone())).is_err()
            {
                *slot = None;
            }
        }
        if self.senders.iter().all(Option::is_none) {
            return Err(io::Error::other("every target stopped accepting data"));
        }
        Ok(())
    }

    /// Sends the rest and ends every stream normally.
    pub fn finish(mut self) -> io::Result<()> {
        self.send()?;
        self.finished = true;
        self.senders.clear();
        Ok(())
    }
}

impl Write for FanOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        if !self.finished {
            for tx in self.senders.iter().flatten() {
                let _ = tx.try_send(Err(io::Error::other(
                    "the backup stopped before its end; upload abandoned",
                )));
            }
        }
    }
}

/// What the encoder saw.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub plaintext: (u64, String),
    pub ciphertext: (u64, String),
}

/// Compresses and encrypts `src` into `out`. `recipients` empty means no
/// encryption (allowed only when the configuration says so explicitly).
/// The fan-out comes back unfinished: the caller ends the streams only once
/// the source has confirmed that it is complete.
pub fn seal(
    src: impl Read,
    level: i32,
    recipients: &[age::x25519::Recipient],
    out: FanOut,
) -> io::Result<(Sealed, FanOut)> {
    let (plain, cipher) = (Tally::default(), Tally::default());
    let mut src = TallyReader::new(src, plain.clone());
    let counted = TallyWriter {
        inner: out,
        tally: cipher.clone(),
    };
    let fan = if recipients.is_empty() {
        let mut z = zstd::stream::write::Encoder::new(counted, level)?;
        z.include_checksum(true)?;
        pump(&mut src, &mut z)?;
        z.finish()?
    } else {
        let enc =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| io::Error::other(format!("age: {e}")))?;
        let sealed = enc.wrap_output(counted)?;
        let mut z = zstd::stream::write::Encoder::new(sealed, level)?;
        z.include_checksum(true)?;
        pump(&mut src, &mut z)?;
        z.finish()?.finish()?
    };
    Ok((
        Sealed {
            plaintext: plain.result(),
            ciphertext: cipher.result(),
        },
        fan.inner,
    ))
}

fn pump(src: &mut impl Read, dst: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// Why opening a backup failed, kept apart so the checklist can say which step.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("reading the object: {0}")]
    Download(io::Error),
    #[error("not an age file, or a damaged header: {0}")]
    Header(String),
    #[error("the identity does not match any recipient of this backup: {0}")]
    WrongKey(String),
    #[error("decrypting or decompressing: {0}")]
    Decode(io::Error),
    #[error("writing the plaintext: {0}")]
    Sink(io::Error),
}

/// What the decoder saw. `ciphertext` covers every byte of the object even
/// when decoding failed part way (the rest is drained to finish the hash).
#[derive(Debug)]
pub struct Opened {
    pub ciphertext: (u64, String),
    pub plaintext: (u64, String),
    pub result: Result<(), OpenError>,
}

/// Decrypts and decompresses `src` into `sink`.
pub fn open(
    src: impl Read + Send + 'static,
    identity: Option<&age::x25519::Identity>,
    mut sink: impl Write,
) -> Opened {
    let (cipher, plain) = (Tally::default(), Tally::default());
    let shared = Arc::new(Mutex::new(TallyReader::new(src, cipher.clone())));
    let reader = SharedReader(shared.clone());
    let result = (|| {
        let plaintext: Box<dyn Read> = match identity {
            Some(id) => {
                let d = age::Decryptor::new_buffered(io::BufReader::with_capacity(BUF, reader))
                    .map_err(|e| match e {
                        age::DecryptError::Io(io) => OpenError::Download(io),
                        other => OpenError::Header(other.to_string()),
                    })?;
                let r = d
                    .decrypt(std::iter::once(id as &dyn age::Identity))
                    .map_err(|e| match e {
                        age::DecryptError::NoMatchingKeys => OpenError::WrongKey(e.to_string()),
                        age::DecryptError::Io(io) => OpenError::Download(io),
                        other => OpenError::Header(other.to_string()),
                    })?;
                Box::new(zstd::stream::read::Decoder::new(r).map_err(OpenError::Decode)?)
            }
            None => Box::new(zstd::stream::read::Decoder::new(reader).map_err(OpenError::Decode)?),
        };
        let mut plaintext = TallyReader::new(plaintext, plain.clone());
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match plaintext.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OpenError::Decode(e)),
            };
            sink.write_all(&buf[..n]).map_err(OpenError::Sink)?;
        }
        sink.flush().map_err(OpenError::Sink)?;
        Ok(())
    })();
    // Finish hashing the object, so that "downloadable" is judged on every byte.
    if let Ok(mut r) = shared.lock() {
        let _ = io::copy(&mut *r, &mut io::sink());
    }
    Opened {
        ciphertext: cipher.result(),
        plaintext: plain.result(),
        result,
    }
}

struct SharedReader<R>(Arc<Mutex<R>>);

impl<R: Read> Read for SharedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut r) => r.read(buf),
            Err(_) => Err(io::Error::other("reader poisoned")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(recipients: &[age::x25519::Recipient], id: Option<&age::x25519::Identity>) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let data: Vec<u8> = (0..3_000_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let (fan, mut readers) = FanOut::new(2);
        let collect = |mut r: crate::caps::s3::Reader| {
            rt.spawn(async move {
                let mut v = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v)
                    .await
                    .map(|_| v)
            })
        };
        let b = collect(readers.pop().unwrap());
        let a = collect(readers.pop().unwrap());
        let (sealed, fan) = seal(&data[..], 3, recipients, fan).unwrap();
        fan.finish().unwrap();
        let a = rt.block_on(a).unwrap().unwrap();
        let b = rt.block_on(b).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(sealed.ciphertext.0, a.len() as u64);
        assert_eq!(sealed.plaintext.0, data.len() as u64);
        assert_eq!(a.starts_with(AGE_MAGIC), !recipients.is_empty());
        let mut out = Vec::new();
        let opened = open(io::Cursor::new(a), id, &mut out);
        opened.result.unwrap();
        assert_eq!(out, data);
        assert_eq!(opened.plaintext, sealed.plaintext);
        assert_eq!(opened.ciphertext, sealed.ciphertext);
    }

    #[test]
    fn sealed_bytes_open_to_the_same_plaintext_with_and_without_age() {
        let id = age::x25519::Identity::generate();
        roundtrip(&[id.to_public()], Some(&id));
        roundtrip(&[], None);
    }

    #[test]
    fn an_abandoned_fan_out_ends_its_streams_with_an_error() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (mut fan, mut readers) = FanOut::new(1);
        let mut r = readers.pop().unwrap();
        let task = rt.spawn(async move {
            let mut v = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v).await
        });
        fan.write_all(b"partial").unwrap();
        drop(fan);
        assert!(rt.block_on(task).unwrap().is_err());
    }

    #[test]
    fn a_wrong_key_and_a_flipped_byte_are_told_apart() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (fan, mut readers) = FanOut::new(1);
        let mut r = readers.pop().unwrap();
        let task = rt.spawn(async move {
            let mut v = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut v)
                .await
                .map(|_| v)
        });
        let data = vec![7u8; 200_000];
        seal(&data[..], 3, &[id.to_public()], fan)
            .unwrap()
            .1
            .finish()
            .unwrap();
        let bytes = rt.block_on(task).unwrap().unwrap();
        let opened = open(io::Cursor::new(bytes.clone()), Some(&other), io::sink());
        assert!(
            matches!(opened.result, Err(OpenError::WrongKey(_))),
            "{:?}",
            opened.result
        );
        let mut flipped = bytes.clone();
        let at = flipped.len() - 20;
        flipped[at] ^= 1;
        let opened = open(io::Cursor::new(flipped), Some(&id), io::sink());
        assert!(
            matches!(opened.result, Err(OpenError::Decode(_))),
            "{:?}",
            opened.result
        );
        assert_eq!(
            opened.ciphertext.0,
            bytes.len() as u64,
            "every byte is still hashed"
        );
    }
}
