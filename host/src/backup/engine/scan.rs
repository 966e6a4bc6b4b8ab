//! Counts tables and rows in a `mariadb-dump` stream as it passes, so the
//! manifest's counts describe exactly what the backup holds (a separate
//! `COUNT(*)` would see another snapshot).
//!
//! The dump's shape is regular: one `CREATE TABLE \`t\` (` per table, one
//! `INSERT INTO \`t\` VALUES (…),(…);` per line, values as literals with
//! single-quoted, backslash-escaped strings. Rows are the tuples that open at
//! nesting depth zero inside an INSERT statement.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
pub struct Facts {
    pub tables: BTreeMap<String, u64>,
    /// `file:position` from `-- CHANGE MASTER TO …` (with --master-data=2).
    pub position: Option<String>,
}

const HEAD: usize = 512;

#[derive(Default)]
pub struct Scanner {
    facts: Facts,
    /// The current statement's first bytes, up to its first top-level '('.
    head: Vec<u8>,
    stmt_paren: bool,
    /// Dashes seen where a statement could start: two make a comment line.
    dashes: u8,
    comment: Option<Vec<u8>>,
    in_str: bool,
    in_ident: bool,
    escape: bool,
    depth: u32,
    insert_into: Option<String>,
}

impl Scanner {
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() {
            // Most of a dump is string contents inside INSERT values: jump to
            // the next byte that can end the string instead of stepping.
            if self.in_str && !self.escape && self.stmt_paren && self.comment.is_none() {
                match memchr::memchr2(b'\'', b'\\', &bytes[i..]) {
                    Some(n) => i += n,
                    None => return,
                }
            }
            self.byte(bytes[i]);
            i += 1;
        }
    }

    fn byte(&mut self, b: u8) {
        if let Some(line) = &mut self.comment {
            if b == b'\n' {
                let line = std::mem::take(line);
                self.comment = None;
                self.comment_line(&line);
            } else if line.len() < HEAD {
                line.push(b);
            }
            return;
        }
        let between = self.head.is_empty() && !self.in_str && !self.in_ident && self.depth == 0;
        if between {
            if b == b'-' {
                self.dashes += 1;
                if self.dashes == 2 {
                    self.dashes = 0;
                    self.comment = Some(b"--".to_vec());
                }
                return;
            }
            self.dashes = 0;
            if b.is_ascii_whitespace() {
                return;
            }
        }
        if !self.stmt_paren && self.head.len() < HEAD {
            self.head.push(b);
        }
        if self.in_str {
            match (self.escape, b) {
                (true, _) => self.escape = false,
                (false, b'\\') => self.escape = true,
                (false, b'\'') => self.in_str = false,
                _ => {}
            }
            return;
        }
        if self.in_ident {
            if b == b'`' {
                self.in_ident = false;
            }
            return;
        }
        match b {
            b'\'' => self.in_str = true,
            b'`' => self.in_ident = true,
            b'(' => {
                if self.depth == 0 {
                    if !self.stmt_paren {
                        self.stmt_paren = true;
                        self.statement_head();
                    }
                    if let Some(t) = &self.insert_into
                        && let Some(n) = self.facts.tables.get_mut(t)
                    {
                        *n += 1;
                    }
                }
                self.depth += 1;
            }
            b')' => self.depth = self.depth.saturating_sub(1),
            b';' if self.depth == 0 => {
                self.insert_into = None;
                self.head.clear();
                self.stmt_paren = false;
            }
            _ => {}
        }
    }

    fn statement_head(&mut self) {
        let head = &self.head;
        if let Some(name) = ident_after(head, b"INSERT INTO `") {
            self.facts.tables.entry(name.clone()).or_insert(0);
            self.insert_into = Some(name);
        } else if let Some(name) = ident_after(head, b"CREATE TABLE `") {
            self.facts.tables.entry(name).or_insert(0);
        }
    }

    fn comment_line(&mut self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        if let Some(rest) = line.trim_end().strip_prefix("-- CHANGE MASTER TO ") {
            let field = |name: &str| {
                rest.split(',')
                    .filter_map(|kv| kv.trim().trim_end_matches(';').split_once('='))
                    .find(|(k, _)| k.trim() == name)
                    .map(|(_, v)| v.trim().trim_matches('\'').to_string())
            };
            if let (Some(file), Some(pos)) = (field("MASTER_LOG_FILE"), field("MASTER_LOG_POS")) {
                self.facts.position = Some(format!("{file}:{pos}"));
            }
        }
    }
}

fn ident_after(head: &[u8], prefix: &[u8]) -> Option<String> {
    let rest = head.strip_prefix(prefix)?;
    let end = rest.iter().position(|&b| b == b'`')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// A reader that scans what passes through it.
pub struct ScanReader<R> {
    inner: R,
    scanner: Arc<Mutex<Scanner>>,
}

impl<R> ScanReader<R> {
    pub fn new(inner: R) -> (Self, Arc<Mutex<Scanner>>) {
        let scanner = Arc::new(Mutex::new(Scanner::default()));
        (
            ScanReader {
                inner,
                scanner: scanner.clone(),
            },
            scanner,
        )
    }
}

impl<R: Read> Read for ScanReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Ok(mut s) = self.scanner.lock() {
            s.feed(&buf[..n]);
        }
        Ok(n)
    }
}

pub fn facts(scanner: &Arc<Mutex<Scanner>>) -> Facts {
    scanner.lock().map(|s| s.facts.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_counted_per_table_whatever_the_strings_hold() {
        let dump = "-- CHANGE MASTER TO MASTER_LOG_FILE='bin.000007', MASTER_LOG_POS=1234;\n\
            -- Table structure for table `we'ird`\n\
            CREATE TABLE `we'ird` (\n  `id` int(11) NOT NULL,\n  `v` varchar(10) DEFAULT '(',\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB;\n\
            CREATE TABLE `empty` (\n  `id` int(11)\n);\n\
            INSERT INTO `we'ird` VALUES (1,'a),(b'),(2,'it\\'s ( ;'),(3,NULL);\n\
            /*!40000 ALTER TABLE `we'ird` ENABLE KEYS */;\n\
            INSERT INTO `we'ird` VALUES\n(4,0x28),\n(5,'-- not a comment');\n";
        let mut s = Scanner::default();
        // Fed in awkward pieces: state must survive chunk boundaries.
        for chunk in dump.as_bytes().chunks(3) {
            s.feed(chunk);
        }
        assert_eq!(s.facts.tables.get("we'ird"), Some(&5));
        assert_eq!(s.facts.tables.get("empty"), Some(&0));
        assert_eq!(s.facts.position.as_deref(), Some("bin.000007:1234"));
    }
}
