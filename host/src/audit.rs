//! The tamper-evident audit log: hash-chained JSON lines.
//!
//! Each line is `{"hash":"<sha256 hex>","record":{...}}`. `hash` is the
//! sha256 of the exact bytes of the `record` value as written on that line,
//! and every record's `prev` is the previous line's `hash` (64 zeros for the
//! first). The format is specified in docs/audit-format.md.

use crate::digest::sha256_hex;
#[cfg(test)]
use serde_json::json;
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const LINE_PREFIX: &str = "{\"hash\":\"";
const RECORD_KEY: &str = "\",\"record\":";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Appends records to one run's log.
pub struct AuditWriter {
    out: BufWriter<File>,
    path: PathBuf,
    prev: String,
    seq: u64,
    bytes: u64,
    last_flush: std::time::Instant,
}

/// How long a read-only call's record may wait in the buffer.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl AuditWriter {
    pub fn create(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io)?;
        Ok(AuditWriter {
            out: BufWriter::with_capacity(64 << 10, file),
            path: path.to_path_buf(),
            prev: GENESIS.to_string(),
            seq: 0,
            bytes: 0,
            last_flush: std::time::Instant::now(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The hash of the last record written.
    pub fn head(&self) -> &str {
        &self.prev
    }

    /// Appends one record of type `kind` with the given fields.
    pub fn append(&mut self, kind: &str, fields: Map<String, Value>) -> Result<(), AuditError> {
        // Written by hand rather than through a Map: this is on the path of
        // every capability call. Key order: seq, prev, ts, type, then fields.
        let mut body: Vec<u8> = Vec::with_capacity(384);
        let _ = write!(
            body,
            "{{\"seq\":{},\"prev\":\"{}\",\"ts\":\"{}\",\"type\":",
            self.seq,
            self.prev,
            crate::clock::rfc3339_now()
        );
        push_json(&mut body, kind);
        for (k, v) in &fields {
            if matches!(k.as_str(), "seq" | "prev" | "ts" | "type") {
                continue;
            }
            body.push(b',');
            push_json(&mut body, k);
            body.push(b':');
            push_json(&mut body, v);
        }
        body.push(b'}');
        let hash = sha256_hex(&body);
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        // The whole line in one write: a kill lands between records, not
        // inside one (and verify reads a cut-off last line as INCOMPLETE).
        let mut line =
            Vec::with_capacity(LINE_PREFIX.len() + hash.len() + RECORD_KEY.len() + body.len() + 2);
        line.extend_from_slice(LINE_PREFIX.as_bytes());
        line.extend_from_slice(hash.as_bytes());
        line.extend_from_slice(RECORD_KEY.as_bytes());
        line.extend_from_slice(&body);
        line.extend_from_slice(b"}\n");
        self.out.write_all(&line).map_err(io)?;
        self.bytes += line.len() as u64;
        self.prev = hash;
        self.seq += 1;
        Ok(())
    }

    /// Pushes buffered records to the file.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        self.last_flush = std::time::Instant::now();
        self.out.flush().map_err(|source| AuditError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flushes now when `urgent`, else when the oldest buffered record has
    /// waited [`FLUSH_EVERY`]: a write per record would double the cost of
    /// a read-only capability call.
    pub fn flush_soon(&mut self, urgent: bool) -> Result<(), AuditError> {
        if urgent || self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// Flushes and syncs to disk (at the end of a run).
    pub fn finish(&mut self) -> Result<(), AuditError> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_all()
            .map_err(|source| AuditError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing strings and JSON values into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Result of verifying a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record chains and the last one is the run summary.
    Ok { records: u64, head: String },
    /// The chain holds but the summary record is missing: the log was cut short.
    Incomplete { records: u64, head: String },
    /// Line `line` (1-based) breaks the chain, for `reason`.
    Broken { line: u64, reason: String },
}

/// One parsed line.
pub struct Line {
    pub hash: String,
    pub record: Map<String, Value>,
}

/// Splits a line into its stated hash and the exact record bytes.
fn split_line(text: &str) -> Result<(&str, &str), String> {
    let rest = text
        .strip_prefix(LINE_PREFIX)
        .ok_or("does not start with {\"hash\":\"")?;
    if rest.len() < 64 + RECORD_KEY.len() {
        return Err("line too short".into());
    }
    // Checked before slicing: a tampered line may hold multi-byte characters.
    let hash = rest
        .get(..64)
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("the hash is not 64 hexadecimal digits")?;
    let rest = &rest[64..];
    let body = rest
        .strip_prefix(RECORD_KEY)
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("expected \",\"record\":{...}} after the hash")?;
    Ok((hash, body))
}

/// Verifies a log file. `expected_head`, when known (from the host's state
/// directory), must equal the hash of the last record; `run_id`, when
/// known (the log's folder), must be the one its header names.
pub fn verify(
    path: &Path,
    expected_head: Option<&str>,
    run_id: Option<&str>,
) -> Result<Verdict, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // A last line without its newline was cut off while being written.
    let cut_tail = {
        use std::os::unix::fs::FileExt;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut last = [0u8; 1];
        len > 0 && file.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n'
    };
    let mut prev = GENESIS.to_string();
    let mut records = 0u64;
    let mut last_type = String::new();
    let mut lines = BufReader::new(&file).lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let n = i as u64 + 1;
        let is_last = lines.peek().is_none();
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                return Ok(Verdict::Broken {
                    line: n,
                    reason: format!("unreadable: {e}"),
                });
            }
        };
        let broken = |reason: String| Ok(Verdict::Broken { line: n, reason });
        let (stated, body) = match split_line(&line) {
            Ok(x) => x,
            // The run died while writing its last record (no newline, no
            // closing brace): what came before chains; incomplete, not forged.
            Err(_) if is_last && cut_tail => {
                return Ok(Verdict::Incomplete {
                    records,
                    head: prev,
                });
            }
            Err(e) => return broken(format!("malformed line: {e}")),
        };
        let actual = sha256_hex(body.as_bytes());
        if actual != stated {
            return broken(format!(
                "record content does not match its hash (stated {}…, actual {}…): the record was altered",
                &stated[..12],
                &actual[..12]
            ));
        }
        let record: Map<String, Value> = match serde_json::from_str(body) {
            Ok(r) => r,
            Err(e) => return broken(format!("record is not a JSON object: {e}")),
        };
        if record.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return broken(format!(
                "prev does not match the hash of line {}: a record before it was removed, inserted or reordered",
                n - 1
            ));
        }
        if record.get("seq").and_then(Value::as_u64) != Some(records) {
            return broken(format!(
                "seq is {} where {records} was expected: records were removed, inserted or reordered",
                record.get("seq").map(Value::to_string).unwrap_or_default()
            ));
        }
        last_type = record
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if last_type == "run-start"
            && let Some(expected) = run_id
        {
            let said = record.get("run_id").and_then(Value::as_str).unwrap_or("");
            if said != expected {
                return broken(format!(
                    "the log is of run {said:?} but sits in the folder of run {expected:?}: it was moved or replaced"
                ));
            }
        }
        prev = stated.to_string();
        records += 1;
    }
    if records == 0 {
        return Ok(Verdict::Broken {
            line: 1,
            reason: "the log is empty".into(),
        });
    }
    if let Some(expected) = expected_head
        && expected != prev
    {
        return Ok(Verdict::Broken {
            line: records,
            reason: format!(
                "the last record's hash {}… differs from the head recorded in the state directory ({}…): the log was rewritten or cut",
                &prev[..12],
                expected.get(..12).unwrap_or(expected)
            ),
        });
    }
    if last_type != "run-end" {
        return Ok(Verdict::Incomplete {
            records,
            head: prev,
        });
    }
    Ok(Verdict::Ok {
        records,
        head: prev,
    })
}

/// Reads every record of a log (without verifying it).
pub fn read(path: &Path) -> Result<Vec<Line>, AuditError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (hash, body) = split_line(l).ok()?;
            Some(Line {
                hash: hash.to_string(),
                record: serde_json::from_str(body).ok()?,
            })
        })
        .collect())
}

/// Where the host keeps the final hash of each run, outside the log itself.
pub fn head_file(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir
        .join("audit-heads")
        .join(format!("{run_id}.sha256"))
}

pub fn store_head(state_dir: &Path, run_id: &str, head: &str) -> std::io::Result<()> {
    let path = head_file(state_dir, run_id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{head}\n"))
}

pub fn load_head(state_dir: &Path, run_id: &str) -> Option<String> {
    std::fs::read_to_string(head_file(state_dir, run_id))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Renders a readable timeline of a log.
pub fn render_timeline(lines: &[Line]) -> String {
    let mut out = String::new();
    let get = |r: &Map<String, Value>, k: &str| -> String {
        match r.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    };
    for l in lines {
        let r = &l.record;
        let ts = get(r, "ts");
        let time = ts.get(11..23).unwrap_or(&ts);
        let line = match get(r, "type").as_str() {
            "run-start" => format!(
                "run {} of {} {} (component {}…, WIT {})",
                get(r, "run_id"),
                get(r, "scenario"),
                get(r, "scenario_version"),
                get(r, "component_sha256").get(..12).unwrap_or(""),
                get(r, "wit_version")
            ),
            "step-start" => format!(
                "▶ {} [{}] budget {} s",
                get(r, "step"),
                get(r, "phase"),
                get(r, "budget_s")
            ),
            "step-end" => format!(
                "■ {} → {} in {} ms{}",
                get(r, "step"),
                get(r, "outcome"),
                get(r, "duration_ms"),
                match get(r, "detail").as_str() {
                    "" => String::new(),
                    d => format!(": {d}"),
                }
            ),
            "call" => format!(
                "  {} {}.{}({}) {} [{}] {} µs{}",
                if get(r, "decision") == "allow" {
                    "·"
                } else {
                    "✗"
                },
                get(r, "interface"),
                get(r, "op"),
                get(r, "target"),
                get(r, "decision"),
                get(r, "grant"),
                get(r, "duration_us"),
                match get(r, "error").as_str() {
                    "" => String::new(),
                    e => format!(" error: {e}"),
                }
            ),
            "guest-output" => format!("  > {}", get(r, "text").trim_end()),
            "run-end" => format!(
                "run ended: {} (exit {})",
                get(r, "outcome"),
                get(r, "exit_code")
            ),
            other => format!("{other}: {}", Value::Object(r.clone())),
        };
        // Every field may hold guest text: one record, one line.
        out.push_str(&format!(
            "{}  {}\n",
            crate::text::terminal(time),
            crate::text::terminal(&line)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_log(dir: &Path, n: usize, finish: bool) -> PathBuf {
        let path = dir.join("audit.jsonl");
        let mut w = AuditWriter::create(&path).unwrap();
        let mut start = Map::new();
        start.insert("run_id".into(), json!("20261130T120000Z-abcdef"));
        w.append("run-start", start).unwrap();
        for i in 0..n {
            let mut m = Map::new();
            m.insert("i".into(), json!(i));
            w.append("call", m).unwrap();
        }
        if finish {
            w.append("run-end", Map::new()).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn rewrite(path: &Path, lines: &[String]) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    #[test]
    fn a_fresh_log_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 5, true);
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Ok { records: 7, .. }
        ));
    }

    #[test]
    fn every_changed_byte_is_caught_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3, true);
        let original = std::fs::read(&path).unwrap();
        let mut line = 1u64;
        for i in 0..original.len() {
            if original[i] == b'\n' {
                line += 1;
                continue;
            }
            let mut bytes = original.clone();
            bytes[i] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            match verify(&path, None, None).unwrap() {
                Verdict::Broken { line: l, .. } => assert_eq!(l, line, "byte {i}"),
                v => panic!("flipping byte {i} went unnoticed: {v:?}"),
            }
        }
    }

    #[test]
    fn deleted_inserted_and_reordered_lines_are_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 4, true);
        let orig = lines(&path);

        let mut deleted = orig.clone();
        deleted.remove(2);
        rewrite(&path, &deleted);
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Broken { line: 3, .. }
        ));

        let mut inserted = orig.clone();
        inserted.insert(1, orig[3].clone());
        rewrite(&path, &inserted);
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));

        let mut swapped = orig.clone();
        swapped.swap(1, 2);
        rewrite(&path, &swapped);
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));
    }

    #[test]
    fn a_multibyte_character_in_the_hash_is_reported_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 1, true);
        let mut l = lines(&path);
        l[1] = l[1].replacen("\"hash\":\"", "\"hash\":\"é", 1);
        rewrite(&path, &l);
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));
    }

    #[test]
    fn a_log_without_summary_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3, false);
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Incomplete { records: 4, .. }
        ));
    }

    #[test]
    fn a_log_rewritten_from_scratch_is_caught_by_the_stored_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3, true);
        let Verdict::Ok { head, .. } = verify(&path, None, None).unwrap() else {
            panic!("fresh log must verify")
        };
        std::fs::remove_file(&path).unwrap();
        let forged = write_log(dir.path(), 2, true);
        assert!(matches!(
            verify(&forged, None, None).unwrap(),
            Verdict::Ok { .. }
        ));
        assert!(matches!(
            verify(&forged, Some(&head), None).unwrap(),
            Verdict::Broken { line: 4, .. }
        ));
    }

    #[test]
    fn a_record_cut_off_mid_write_makes_the_log_incomplete_not_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3, false);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(b"{\"hash\":\"0123456789abcdef0123456789abcdef0123456789abcdef");
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Incomplete { records: 4, .. }
        ));
        // With its newline the same line is a damaged record, not a cut.
        bytes.push(b'\n');
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            verify(&path, None, None).unwrap(),
            Verdict::Broken { line: 5, .. }
        ));
    }

    #[test]
    fn a_log_in_another_runs_folder_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_log(dir.path(), 3, true);
        let said = read(&path).unwrap()[0].record["run_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(matches!(
            verify(&path, None, Some(&said)).unwrap(),
            Verdict::Ok { .. }
        ));
        assert!(matches!(
            verify(&path, None, Some("20261130T000000Z-other")).unwrap(),
            Verdict::Broken { line: 1, .. }
        ));
    }
}
