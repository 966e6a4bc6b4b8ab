//! The policy file: which resources a plugin may use, and how.
//!
//! Everything is denied unless granted here. The file is TOML; unknown keys
//! are errors (with line and column), so a misspelt grant never silently
//! grants nothing, or something else.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A parsed and validated policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub plugin: PluginSection,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub audit: AuditSection,
    /// S3 aliases, by name.
    #[serde(default)]
    pub s3: BTreeMap<String, S3Grant>,
    /// Database connections, by name.
    #[serde(default)]
    pub db: BTreeMap<String, DbGrant>,
    /// Backup sources (defined in drhost.toml), by name.
    #[serde(default)]
    pub backup: BTreeMap<String, BackupGrant>,
    #[serde(default)]
    pub http: HttpPolicy,
    /// Allow-listed programs, by name.
    #[serde(default)]
    pub exec: BTreeMap<String, ExecGrant>,
    /// Hosts the plugin may resolve and probe.
    #[serde(default)]
    pub net: NetPolicy,
    /// Where the policy came from; relative paths in it resolve against its directory.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// sha256 of the policy file's bytes, for the audit log.
    #[serde(skip)]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// Refuse any component whose sha256 differs (lowercase hex).
    pub sha256: Option<String>,
    /// The scenario this policy is for. It names the persistent state store
    /// the plugin sees, and a plugin declaring another name is refused; so a
    /// plugin can never reach another scenario's store by declaring its name.
    /// Without it the store belongs to the exact component (its sha256).
    pub scenario: Option<String>,
    /// minisign public keys (the base64 line of a `minisign.pub`); when set,
    /// the component must carry a signature by one of them in
    /// `<plugin>.minisig` beside it.
    #[serde(default, rename = "signed-by")]
    pub signed_by: Vec<String>,
}

/// Where the audit log's head goes besides the state directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuditSection {
    /// An `[s3.*]` alias, write-once, that receives each run's head as
    /// `audit-heads/<run-id>.sha256`. The plugin may not use it.
    pub anchor: Option<String>,
}

/// Resource limits for the guest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Limits {
    /// Linear memory per instance.
    pub memory: ByteSize,
    /// Largest object, query result or HTTP body copied into the guest.
    pub max_guest_bytes: ByteSize,
    /// Most rows one query may return.
    pub max_rows: u64,
    /// Total size of the scenario's state store.
    pub state_bytes: ByteSize,
    /// Guest stdout/stderr kept per step; the rest is dropped with a note.
    pub output_bytes: ByteSize,
    /// Largest audit log of one run: past it every further capability call
    /// is refused, and the log says so.
    pub audit_bytes: ByteSize,
    /// Largest failure reason plus findings one step may return; the rest
    /// is dropped with a note.
    pub findings_bytes: ByteSize,
    /// Longest budget a step may declare; a plugin declaring more is refused.
    pub step_seconds: u64,
    /// Longest a whole run may take: steps still to come when it is spent
    /// fail unstarted, and a step running then is cut.
    pub run_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize(64 << 20),
            max_guest_bytes: ByteSize(8 << 20),
            max_rows: 10_000,
            state_bytes: ByteSize(1 << 20),
            output_bytes: ByteSize(64 << 10),
            audit_bytes: ByteSize(64 << 20),
            findings_bytes: ByteSize(64 << 10),
            step_seconds: 3600,
            run_seconds: 6 * 3600,
        }
    }
}

/// A phase of a scenario, as a policy names it (`phases`, `write-phases`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    Detect,
    Contain,
    Backup,
    Recover,
    Verify,
    Inject,
}

impl PhaseName {
    /// Every phase, in the order a run goes through them (inject first in a drill).
    pub const ALL: [PhaseName; 6] = [
        PhaseName::Detect,
        PhaseName::Contain,
        PhaseName::Backup,
        PhaseName::Recover,
        PhaseName::Verify,
        PhaseName::Inject,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Detect => "detect",
            PhaseName::Contain => "contain",
            PhaseName::Backup => "backup",
            PhaseName::Recover => "recover",
            PhaseName::Verify => "verify",
            PhaseName::Inject => "inject",
        }
    }
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a grant may change things when the policy does not say: detection
/// and verification only read ("verify is read-only even if recover may write").
pub const DEFAULT_WRITE_PHASES: &[PhaseName] = &[
    PhaseName::Contain,
    PhaseName::Backup,
    PhaseName::Recover,
    PhaseName::Inject,
];

/// What an S3 alias may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Access {
    Read,
    List,
    Write,
    Delete,
}

impl fmt::Display for S3Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            S3Access::Read => "read",
            S3Access::List => "list",
            S3Access::Write => "write",
            S3Access::Delete => "delete",
        })
    }
}

/// `[s3.<alias>]`: a bucket (S3 or a local directory), a prefix, and access modes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Grant {
    /// A local directory acting as the bucket (the embedded default).
    pub path: Option<PathBuf>,
    /// Bucket name on an S3-compatible endpoint.
    pub bucket: Option<String>,
    /// Key prefix the alias is confined to ("" for the whole bucket).
    #[serde(default)]
    pub prefix: String,
    pub access: Vec<S3Access>,
    /// S3 endpoint URL; the AWS default when absent.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    /// `env:NAME` or a literal; when absent the standard AWS chain is used.
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    /// A drill's inject steps may use this alias (it holds no production data).
    #[serde(default)]
    pub sandbox: bool,
    /// Phases in which this grant may be used at all (default: every phase).
    #[serde(default)]
    pub phases: Option<Vec<PhaseName>>,
    /// Phases in which it may change things (default: contain, backup,
    /// recover, inject — detect and verify only read).
    #[serde(default)]
    pub write_phases: Option<Vec<PhaseName>>,
    /// Writes may create objects but never replace one (evidence, audit
    /// copies). On S3 pair it with object lock for a guarantee the bucket
    /// itself keeps.
    #[serde(default)]
    pub write_once: bool,
}

impl S3Grant {
    pub fn allows(&self, access: S3Access) -> bool {
        self.access.contains(&access)
    }
}

/// Database access mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DbAccess {
    ReadOnly,
    ReadWrite,
}

impl fmt::Display for DbAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DbAccess::ReadOnly => "read-only",
            DbAccess::ReadWrite => "read-write",
        })
    }
}

/// `[db.<name>]`: a connection and its access mode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DbGrant {
    /// `mysql://…`, `mariadb://…`, `postgres://…` or `sqlite:…`; `env:NAME` allowed.
    pub url: Secret,
    pub access: DbAccess,
    /// A second account, with SELECT only, for the read-only modes of a
    /// read-write grant (detect and verify phases, plan, `drhost test`).
    pub read_url: Option<Secret>,
    /// Overrides `limits.max-rows` for this connection.
    pub max_rows: Option<u64>,
    /// A drill's inject steps may use this connection.
    #[serde(default)]
    pub sandbox: bool,
    /// Phases in which this grant may be used at all (default: every phase).
    #[serde(default)]
    pub phases: Option<Vec<PhaseName>>,
    /// Phases in which it may change things (default: contain, backup,
    /// recover, inject — detect and verify only read).
    #[serde(default)]
    pub write_phases: Option<Vec<PhaseName>>,
    /// Data-validation queries by name, each counting the rows that violate
    /// an invariant (`db.invariants` runs them; the plugin never sees the SQL
    /// text it did not write).
    #[serde(default)]
    pub invariants: BTreeMap<String, String>,
}

/// What a plugin may do with a backup source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupAccess {
    Create,
    List,
    Verify,
    Restore,
}

impl fmt::Display for BackupAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupAccess::Create => "create",
            BackupAccess::List => "list",
            BackupAccess::Verify => "verify",
            BackupAccess::Restore => "restore",
        })
    }
}

/// `[backup.<source>]`: operations on a source of drhost.toml, and the
/// sources a restore of it may replace.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackupGrant {
    pub access: Vec<BackupAccess>,
    #[serde(default)]
    pub restore_to: Vec<String>,
    /// A drill's inject steps may use this source.
    #[serde(default)]
    pub sandbox: bool,
    /// Phases in which this grant may be used at all (default: every phase).
    #[serde(default)]
    pub phases: Option<Vec<PhaseName>>,
    /// Phases in which it may change things (default: contain, backup,
    /// recover, inject — detect and verify only read).
    #[serde(default)]
    pub write_phases: Option<Vec<PhaseName>>,
}

/// `[exec.<name>]`: one program a plugin may run, with a pattern per
/// argument. No shell: the arguments reach the program as they are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExecGrant {
    /// Absolute path of the program.
    pub program: PathBuf,
    /// One pattern per argument (see [`ArgPattern`]).
    #[serde(default)]
    pub args: Vec<ArgPattern>,
    /// A `*` at the start of a pattern may match a leading `-` (an option).
    #[serde(default)]
    pub allow_options: bool,
    /// The program is killed after this long ("30s", "2m", "500ms").
    #[serde(default = "default_exec_timeout")]
    pub timeout: DurationText,
    /// Standard output and error kept, each.
    #[serde(default = "default_exec_output")]
    pub max_output: ByteSize,
    /// Working directory; the policy's directory when absent.
    pub cwd: Option<PathBuf>,
    /// Environment variables passed to the program (nothing else is inherited
    /// but PATH); values may be `env:NAME`.
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
    /// The operator declares that the program only reads (`tail` of a
    /// log, a status query): its runs are not mutating calls, so steps that
    /// only read may use it. Default false: every run is a mutating call.
    #[serde(default)]
    pub read_only: bool,
    /// The program starts a service meant to outlive it (a restart
    /// script): what it leaves running after a clean exit is kept. Default
    /// false: when the program exits, everything it started is killed too.
    /// A timeout kills everything either way.
    #[serde(default)]
    pub leaves_running: bool,
    /// A drill's inject steps may run it.
    #[serde(default)]
    pub sandbox: bool,
    /// Phases in which this grant may be used at all (default: every phase).
    #[serde(default)]
    pub phases: Option<Vec<PhaseName>>,
    /// Phases in which it may change things (default: contain, backup,
    /// recover, inject — detect and verify only read).
    #[serde(default)]
    pub write_phases: Option<Vec<PhaseName>>,
}

/// One argument pattern of an exec grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgPattern {
    /// Text where `*` matches any run of characters, except that it never
    /// matches a control character, a `.` or `..` path segment, nor a
    /// leading `-` unless the grant sets `allow-options`.
    Glob(String),
    /// `{ path-under = "/srv/data" }`: an absolute path that, once `.`, `..`
    /// and `//` are resolved as text, is that directory or lies in it. The
    /// program receives the resolved form.
    PathUnder(PathBuf),
}

impl fmt::Display for ArgPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgPattern::Glob(p) => write!(f, "{p:?}"),
            ArgPattern::PathUnder(d) => write!(f, "{{ path-under = {:?} }}", d.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ArgPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ArgPattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a pattern string or a table { path-under = \"/dir\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ArgPattern, E> {
                Ok(ArgPattern::Glob(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<ArgPattern, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields, rename_all = "kebab-case")]
                struct Table {
                    path_under: PathBuf,
                }
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(ArgPattern::PathUnder(t.path_under))
            }
        }
        d.deserialize_any(V)
    }
}

fn default_exec_timeout() -> DurationText {
    DurationText(std::time::Duration::from_secs(30))
}

fn default_exec_output() -> ByteSize {
    ByteSize(64 << 10)
}

impl ExecGrant {
    /// Why `args` do not fit the grant's patterns, or `None` when they do.
    pub fn mismatch(&self, args: &[String]) -> Option<String> {
        self.check(args).err()
    }

    /// The arguments to pass to the program (`path-under` ones in their
    /// resolved form), or why they do not fit the grant's patterns.
    pub fn check(&self, args: &[String]) -> Result<Vec<String>, String> {
        if args.len() != self.args.len() {
            let patterns: Vec<String> = self.args.iter().map(ToString::to_string).collect();
            return Err(format!(
                "{} arguments given, the grant has {} patterns [{}]",
                args.len(),
                self.args.len(),
                patterns.join(", ")
            ));
        }
        self.args
            .iter()
            .zip(args)
            .enumerate()
            .map(|(i, (p, a))| {
                let matched = match p {
                    ArgPattern::Glob(g) => {
                        arg_glob_match(g, a, self.allow_options).map(|()| a.clone())
                    }
                    ArgPattern::PathUnder(dir) => path_under(dir, a),
                };
                matched.map_err(|why| format!("argument {} {a:?} does not match {p}: {why}", i + 1))
            })
            .collect()
    }
}

/// The text each `*` of `pattern` matched in `text` (the middle ones
/// leftmost), or `None` when it does not match. A pattern without `*`
/// matches only itself.
fn wildcard_spans<'t>(pattern: &str, text: &'t str) -> Option<Vec<&'t str>> {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return (pattern == text).then(Vec::new);
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return None;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    let mut spans = Vec::with_capacity(parts.len() - 1);
    for part in &parts[1..parts.len() - 1] {
        let i = rest.find(part)?;
        spans.push(&rest[..i]);
        rest = &rest[i + part.len()..];
    }
    spans.push(rest);
    Some(spans)
}

/// `*` matches any run of characters (including none); everything else
/// matches itself. No restriction on what `*` matches: see [`arg_glob_match`].
pub fn glob_match(pattern: &str, text: &str) -> bool {
    wildcard_spans(pattern, text).is_some()
}

fn is_dot_segment(s: &str) -> bool {
    s == "." || s == ".."
}

/// Matches an exec argument. Where the pattern has a `*`, the argument may
/// not hold a `.` or `..` path segment (nor may any `*` match one, so
/// `--dir=*` refuses `--dir=../x`), no `*` matches a control character, and a
/// leading `*` matches a leading `-` only with `allow_options`.
pub fn arg_glob_match(pattern: &str, text: &str, allow_options: bool) -> Result<(), String> {
    let spans = wildcard_spans(pattern, text).ok_or("the text differs")?;
    if spans.is_empty() {
        return Ok(());
    }
    if spans.iter().any(|s| s.chars().any(char::is_control)) {
        return Err("`*` never matches a control character (NUL, newline, …)".into());
    }
    if text.split('/').any(is_dot_segment) || spans.iter().any(|s| s.split('/').any(is_dot_segment))
    {
        return Err("`*` never matches a '.' or '..' path segment".into());
    }
    if text.starts_with('-') && !pattern.starts_with('-') && !allow_options {
        return Err(
            "`*` matches a leading '-' (an option) only when the grant sets allow-options = true"
                .into(),
        );
    }
    Ok(())
}

/// Resolves `.`, `..` and empty segments of an absolute path as text.
pub fn lexical_normalize(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let mut out: Vec<&str> = Vec::new();
    for seg in rest.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    Some(format!("/{}", out.join("/")))
}

/// The resolved form of `arg` when it is an absolute path in `dir` (itself
/// resolved at load), or why not. Lexical: the filesystem is not consulted.
fn path_under(dir: &Path, arg: &str) -> Result<String, String> {
    if arg.chars().any(char::is_control) {
        return Err("a path with a control character (NUL, newline, …)".into());
    }
    let norm = lexical_normalize(arg).ok_or("not an absolute path")?;
    if Path::new(&norm).starts_with(dir) {
        Ok(norm)
    } else {
        Err(format!("{norm:?} is not in {}", dir.display()))
    }
}

/// `[net]`: hosts the plugin may resolve and probe.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetPolicy {
    /// `host:port`, `host:*`, or `host` (resolve only).
    #[serde(default)]
    pub allow: Vec<String>,
    /// A drill's inject steps may resolve and probe these hosts too (to see
    /// that the outage they caused took effect).
    #[serde(default)]
    pub sandbox: bool,
    /// Phases in which `[net]` may be used at all (default: every phase).
    #[serde(default)]
    pub phases: Option<Vec<PhaseName>>,
}

impl NetPolicy {
    /// The entry allowing `host` (and `port`, when probing).
    pub fn allows(&self, host: &str, port: Option<u16>) -> Option<&str> {
        self.allow
            .iter()
            .find(|e| {
                let (h, p) = match e.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
                    _ => (e.as_str(), None),
                };
                let h = h.trim_start_matches('[').trim_end_matches(']');
                h.eq_ignore_ascii_case(host)
                    && match (port, p) {
                        (None, _) => true,
                        (Some(_), Some("*")) => true,
                        (Some(n), Some(p)) => p == n.to_string(),
                        (Some(_), None) => false,
                    }
            })
            .map(String::as_str)
    }
}

/// A duration written as "30s", "2m", "1h", "2w", "500ms", a sum of those
/// ("1m30s", "1h 15m"), or a bare number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationText(pub std::time::Duration);

impl DurationText {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let invalid =
            || format!("invalid duration {s:?}: expected e.g. \"30s\", \"2m\" or \"1m30s\"");
        if t.is_empty() {
            return Err(invalid());
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse()
                .map(|n| DurationText(std::time::Duration::from_secs(n)))
                .map_err(|_| invalid());
        }
        let mut rest = t;
        let mut ms: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let n: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let letters = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let per: u64 = match &rest[..letters] {
                "ms" => 1,
                "s" => 1_000,
                "m" | "min" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                "" => return Err(invalid()),
                other => return Err(format!("invalid duration unit {other:?} in {s:?}")),
            };
            rest = rest[letters..].trim_start();
            ms = n
                .checked_mul(per)
                .and_then(|v| ms.checked_add(v))
                .ok_or_else(|| format!("duration {s:?} is too long"))?;
        }
        Ok(DurationText(std::time::Duration::from_millis(ms)))
    }
}

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DurationText::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `[http]`: the outgoing allow-list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpPolicy {
    /// URL prefixes: scheme, host, optional port, optional path prefix.
    #[serde(default)]
    pub allow: Vec<AllowedUrl>,
    /// Address ranges (CIDR) that allowed host *names* may resolve to,
    /// beyond public unicast addresses. Private, loopback and link-local
    /// addresses are refused for names unless listed here.
    #[serde(default)]
    pub addresses: Vec<IpNet>,
    /// Largest response body; defaults to `limits.max-guest-bytes`.
    pub max_response_bytes: Option<ByteSize>,
    /// Entries of `allow` that a drill's inject steps may call (stand-ins
    /// and test doubles, never production endpoints).
    #[serde(default)]
    pub sandbox: Vec<AllowedUrl>,
    /// Phases in which `[http]` may be used at all (default: every phase).
    #[serde(default)]
    pub phases: Option<Vec<PhaseName>>,
    /// Phases in which requests other than GET, HEAD and OPTIONS are allowed things (default: contain, backup,
    /// recover, inject — detect and verify only read).
    #[serde(default)]
    pub write_phases: Option<Vec<PhaseName>>,
}

/// A secret: a literal or `env:NAME`, resolved only in the host and never
/// printed (its `Debug` is redacted).
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn literal(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret's value. `env:NAME` reads the host environment.
    pub fn resolve(&self) -> Result<String, String> {
        match self.0.strip_prefix("env:") {
            Some(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))
            }
            None => Ok(self.0.clone()),
        }
    }

    /// Whether it is read from the environment (`env:NAME`).
    pub fn is_env(&self) -> bool {
        self.0.starts_with("env:")
    }

    /// How to describe it without revealing it.
    pub fn describe(&self) -> String {
        match self.0.strip_prefix("env:") {
            Some(name) => format!("env:{name}"),
            None => "<literal>".into(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.describe())
    }
}

/// A byte count written as an integer or as "64 MiB", "8MB", "512 KiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid size {s:?}: expected e.g. \"64 MiB\""))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" | "byte" | "bytes" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => return Err(format!("invalid size unit {other:?} in {s:?}")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{} GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", n >> 10)
        } else {
            write!(f, "{n} bytes")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// An allow-list entry for outgoing HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUrl {
    pub scheme: String,
    pub host: String,
    pub port: u16,
    pub path_prefix: String,
    /// The entry names an IP address rather than a host name.
    pub is_ip: bool,
    pub text: String,
}

impl AllowedUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let url =
            url::Url::parse(s).map_err(|e| format!("invalid URL {s:?} in [http] allow: {e}"))?;
        let scheme = url.scheme().to_string();
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "[http] allow entry {s:?}: only http and https are supported"
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "[http] allow entry {s:?}: credentials do not belong in a URL"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "[http] allow entry {s:?}: no query or fragment allowed"
            ));
        }
        let (host, is_ip) = match url.host() {
            Some(url::Host::Domain(d)) => (d.to_ascii_lowercase(), false),
            Some(url::Host::Ipv4(a)) => (a.to_string(), true),
            Some(url::Host::Ipv6(a)) => (a.to_string(), true),
            None => return Err(format!("[http] allow entry {s:?} has no host")),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("[http] allow entry {s:?} has no port"))?;
        // The same normal form as request paths, so that both compare as text.
        let path_prefix = crate::caps::http::normalize_path(url.path())
            .map_err(|e| format!("[http] allow entry {s:?}: {e}"))?;
        Ok(AllowedUrl {
            scheme,
            host,
            port,
            path_prefix,
            is_ip,
            text: s.to_string(),
        })
    }

    /// Whether a request to this scheme/host/port/path falls under the entry.
    /// `path` must be normalised ([`crate::caps::http::normalize_path`]) and
    /// carry no query. It must equal the prefix or continue it at a `/`
    /// boundary (or the prefix ends in `/`), so `/health` does not allow
    /// `/healthz` or `/health-admin`.
    pub fn matches(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
        if self.scheme != scheme || self.host != host || self.port != port {
            return false;
        }
        let p = self.path_prefix.as_str();
        if p == "/" || p.is_empty() {
            return true;
        }
        match path.strip_prefix(p) {
            Some(rest) => p.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl<'de> Deserialize<'de> for AllowedUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AllowedUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An address range in CIDR notation (`127.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid address {s:?} in [http] addresses"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
            if prefix == 0 {
                0
            } else {
                bits >> (width - u32::from(prefix))
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(i).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(i), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IpNet::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Policy {
    /// The empty policy: no grants at all.
    pub fn deny_all() -> Self {
        Policy::default()
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let bytes = std::fs::read(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| PolicyError::Invalid {
            path: path.to_path_buf(),
            message: "not UTF-8".into(),
        })?;
        let mut policy = Policy::parse(&text).map_err(|message| PolicyError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        policy.source = Some(path.to_path_buf());
        policy.sha256 = Some(crate::digest::sha256_hex(&bytes));
        Ok(policy)
    }

    /// Parses and validates policy text (relative paths stay relative).
    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: Policy =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(pin) = &self.plugin.sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!(
                "[plugin] sha256 must be 64 hex digits, got {pin:?}"
            ));
        }
        if let Some(a) = &self.audit.anchor {
            let Some(g) = self.s3.get(a) else {
                return Err(format!(
                    "[audit] anchor = {a:?}: no [s3.{a}] alias; add one (write-once) for the heads"
                ));
            };
            if !g.write_once || !g.allows(S3Access::Write) || !g.allows(S3Access::Read) {
                return Err(format!(
                    "[audit] anchor = {a:?}: [s3.{a}] must grant read and write and be write-once (write-once = true), so a head once written is never replaced"
                ));
            }
        }
        if self.limits.step_seconds == 0 || self.limits.run_seconds == 0 {
            return Err("[limits] step-seconds and run-seconds must be more than 0".into());
        }
        if self.limits.memory.0 < (1 << 20) {
            return Err(format!(
                "[limits] memory = {} is too small (at least 1 MiB)",
                self.limits.memory
            ));
        }
        for (alias, g) in &self.s3 {
            check_name("s3", alias)?;
            match (&g.path, &g.bucket) {
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "[s3.{alias}] has both path (a local directory) and bucket (S3): choose one"
                    ));
                }
                (None, None) => {
                    return Err(format!(
                        "[s3.{alias}] needs either path = \"dir\" (local) or bucket = \"name\" (S3)"
                    ));
                }
                _ => {}
            }
            if g.path.is_some()
                && (g.endpoint.is_some() || g.access_key_id.is_some() || g.region.is_some())
            {
                return Err(format!(
                    "[s3.{alias}] is a local directory: endpoint, region and keys do not apply"
                ));
            }
            if g.access.is_empty() {
                return Err(format!(
                    "[s3.{alias}] grants no access: list some of read, list, write, delete"
                ));
            }
            if !g.prefix.is_empty() {
                crate::caps::s3::keys::validate_key(&g.prefix)
                    .map_err(|e| format!("[s3.{alias}] prefix: {e}"))?;
                if !g.prefix.ends_with('/') {
                    return Err(format!(
                        "[s3.{alias}] prefix {:?} must end with '/' so that it names a folder",
                        g.prefix
                    ));
                }
            }
        }
        for (name, g) in &self.db {
            check_name("db", name)?;
            if g.read_url.is_some() && g.access == DbAccess::ReadOnly {
                return Err(format!(
                    "[db.{name}] read-url is for read-write grants; a read-only grant's url is already the read-only account"
                ));
            }
        }
        for (name, g) in &self.exec {
            check_name("exec", name)?;
            if !g.program.is_absolute() {
                return Err(format!(
                    "[exec.{name}] program {:?} must be an absolute path (no PATH lookup)",
                    g.program
                ));
            }
            if g.timeout.0.is_zero() {
                return Err(format!("[exec.{name}] timeout must be more than 0"));
            }
            for p in &g.args {
                match p {
                    ArgPattern::Glob(t) if t.contains('*') && t.split('/').any(is_dot_segment) => {
                        return Err(format!(
                            "[exec.{name}] pattern {t:?} has a '.' or '..' segment: a pattern with '*' never matches one; write the path without it"
                        ));
                    }
                    ArgPattern::PathUnder(d)
                        if d.to_str().is_none()
                            || d.to_str().and_then(lexical_normalize).as_deref() != d.to_str() =>
                    {
                        return Err(format!(
                            "[exec.{name}] path-under {:?} must be an absolute path without '.', '..', '//' or a trailing '/'",
                            d.display()
                        ));
                    }
                    _ => {}
                }
            }
        }
        for e in &self.net.allow {
            let host = e.rsplit_once(':').map_or(e.as_str(), |(h, _)| h);
            let port = e.rsplit_once(':').map(|(_, p)| p);
            if host.is_empty() || port.is_some_and(|p| p != "*" && p.parse::<u16>().is_err()) {
                return Err(format!(
                    "[net] allow entry {e:?}: expected \"host\", \"host:port\" or \"host:*\""
                ));
            }
        }
        for e in &self.http.sandbox {
            if !self.http.allow.contains(e) {
                return Err(format!(
                    "[http] sandbox entry {:?} is not in [http] allow",
                    e.text
                ));
            }
        }
        for (name, g) in &self.backup {
            check_name("backup", name)?;
            if g.access.is_empty() {
                return Err(format!(
                    "[backup.{name}] grants no access: list some of create, list, verify, restore"
                ));
            }
            if !g.restore_to.is_empty() && !g.access.contains(&BackupAccess::Restore) {
                return Err(format!(
                    "[backup.{name}] names restore-to but does not grant access \"restore\""
                ));
            }
        }
        Ok(())
    }

    /// Resolves a path from the policy against the policy file's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.source.as_ref().and_then(|s| s.parent()) {
            Some(dir) => dir.join(p),
            None => p.to_path_buf(),
        }
    }

    pub fn max_response_bytes(&self) -> u64 {
        self.http
            .max_response_bytes
            .unwrap_or(self.limits.max_guest_bytes)
            .0
    }
}

fn check_name(table: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "[{table}.{name}]: names may use letters, digits, '-' and '_' only"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_are_sums_of_units_and_never_overflow() {
        use super::DurationText;
        let secs = |t: &str| DurationText::parse(t).map(|d| d.0.as_millis());
        assert_eq!(secs("30"), Ok(30_000));
        assert_eq!(secs("500ms"), Ok(500));
        assert_eq!(secs("1m30s"), Ok(90_000));
        assert_eq!(secs("1h 15m"), Ok(4_500_000));
        assert_eq!(secs("2w"), Ok(1_209_600_000));
        assert_eq!(secs("1d12h"), Ok(129_600_000));
        for bad in ["", "s", "1x", "1m30", "m1", "-1s", "1.5h"] {
            assert!(DurationText::parse(bad).is_err(), "{bad:?}");
        }
        let e = DurationText::parse("99999999999999999w").unwrap_err();
        assert!(e.contains("too long"), "{e}");
    }

    use super::*;

    #[test]
    fn unknown_key_is_rejected_with_line_and_column() {
        let err = Policy::parse("[limits]\nmemroy = \"64 MiB\"\n").unwrap_err();
        assert!(err.contains("line 2, column 1"), "{err}");
        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn bad_access_mode_points_at_its_line() {
        let err =
            Policy::parse("[s3.a]\npath = \"x\"\naccess = [\"read\", \"destroy\"]\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("destroy"), "{err}");
    }

    #[test]
    fn exec_arguments_match_their_patterns_position_by_position() {
        let p = Policy::parse(
            "[exec.restart]\nprogram = \"/usr/bin/systemctl\"\nargs = [\"restart\", \"app@*.service\"]\n",
        )
        .unwrap();
        let g = &p.exec["restart"];
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(g.mismatch(&a(&["restart", "app@blue.service"])), None);
        assert!(
            g.mismatch(&a(&["stop", "app@blue.service"]))
                .unwrap()
                .contains("argument 1")
        );
        assert!(
            g.mismatch(&a(&["restart", "db.service"]))
                .unwrap()
                .contains("argument 2")
        );
        assert!(
            g.mismatch(&a(&["restart"]))
                .unwrap()
                .contains("1 arguments given")
        );
        assert_eq!(g.timeout.0, std::time::Duration::from_secs(30));
        assert!(glob_match("a*b*c", "aXbYc") && glob_match("*", "") && !glob_match("a*b", "ab-"));
        let err = Policy::parse("[exec.x]\nprogram = \"sh\"\n").unwrap_err();
        assert!(err.contains("absolute path"), "{err}");
    }

    fn exec_grant(toml_args: &str, extra: &str) -> ExecGrant {
        let p = Policy::parse(&format!(
            "[exec.x]\nprogram = \"/bin/x\"\nargs = {toml_args}\n{extra}"
        ))
        .unwrap();
        p.exec["x"].clone()
    }

    fn one(g: &ExecGrant, a: &str) -> Result<Vec<String>, String> {
        g.check(&[a.to_string()])
    }

    #[test]
    fn star_does_not_match_dot_segments_or_control_characters() {
        let g = exec_grant(r#"["/srv/data/*"]"#, "");
        assert!(one(&g, "/srv/data/a.sql").is_ok());
        assert!(one(&g, "/srv/data/2026/a..b").is_ok());
        for a in [
            "/srv/data/../../etc/shadow",
            "/srv/data/..",
            "/srv/data/.",
            "/srv/data/./x",
            "/srv/data/a/../../x",
            "/srv/data/x/..",
            "/srv/data/a\0b",
            "/srv/data/a\nb",
        ] {
            let err = one(&g, a).unwrap_err();
            assert!(err.contains("argument 1"), "{a}: {err}");
        }
        // The segment starts where the `*` does: `--dir=*` refuses `--dir=../x`.
        let g = exec_grant(r#"["--dir=*"]"#, "");
        assert!(one(&g, "--dir=backups").is_ok());
        assert!(one(&g, "--dir=../x").is_err());
        assert!(one(&g, "--dir=..").is_err());
        // An empty `*` between literal dots cannot make a `..` either.
        let g = exec_grant(r#"["/srv/data/.*."]"#, "");
        assert!(one(&g, "/srv/data/..").is_err());
        assert!(one(&g, "/srv/data/.a.").is_ok());
    }

    #[test]
    fn star_matches_a_leading_dash_only_when_options_are_allowed() {
        let g = exec_grant(r#"["*"]"#, "");
        assert!(one(&g, "db1").is_ok());
        let err = one(&g, "--output=/etc/passwd").unwrap_err();
        assert!(err.contains("allow-options"), "{err}");
        assert!(one(&g, "-").is_err());
        let g = exec_grant(r#"["*"]"#, "allow-options = true\n");
        assert!(one(&g, "--verbose").is_ok());
        // A pattern that starts with '-' names its option itself.
        let g = exec_grant(r#"["--since=*", "-n"]"#, "");
        assert!(g.check(&["--since=1h".into(), "-n".into()]).is_ok());
        assert!(g.check(&["--since=-1h".into(), "-n".into()]).is_ok());
        assert!(g.check(&["--until=1h".into(), "-n".into()]).is_err());
    }

    #[test]
    fn path_under_resolves_as_text_and_passes_the_resolved_path() {
        let g = exec_grant(r#"["dump", { path-under = "/srv/data" }]"#, "");
        let a = |v: &str| g.check(&["dump".to_string(), v.to_string()]);
        assert_eq!(a("/srv/data/x/../y.sql").unwrap()[1], "/srv/data/y.sql");
        assert_eq!(a("/srv/data//a/./b").unwrap()[1], "/srv/data/a/b");
        assert_eq!(a("/srv/data").unwrap()[1], "/srv/data");
        for bad in [
            "/srv/data/../../etc/shadow",
            "/srv/data/..",
            "/srv/database",
            "/srv/data2/x",
            "srv/data/x",
            "data/x",
            "-rf",
            "/srv/data/a\0",
        ] {
            let err = a(bad).unwrap_err();
            assert!(
                err.contains("argument 2") && err.contains("path-under"),
                "{bad}: {err}"
            );
        }
        for bad in [
            r#"[{ path-under = "srv" }]"#,
            r#"[{ path-under = "/srv/../etc" }]"#,
            r#"[{ path-under = "/srv/data/" }]"#,
            r#"[{ path-undr = "/srv" }]"#,
            r#"["./run-*.sh"]"#,
            r#"["/srv/*/../x"]"#,
        ] {
            let r = Policy::parse(&format!("[exec.x]\nprogram = \"/bin/x\"\nargs = {bad}\n"));
            assert!(r.is_err(), "{bad}");
        }
        // Literal patterns keep matching exactly, dots included.
        let g = exec_grant(r#"["../x", "-n", "100"]"#, "");
        assert!(g.check(&["../x".into(), "-n".into(), "100".into()]).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn what_star_allows_stays_under_its_directory(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "..", ".", "", "a", "-", "-rf", "\0", "..a", "etc", "shadow", "/", "//",
                ]),
                0..8,
            ),
            lead in proptest::sample::select(vec!["/srv/data/", "/srv/data", "-", "", "/srv/"]),
        ) {
            let arg = format!("{lead}{}", parts.join("/"));
            let g = exec_grant(r#"["/srv/data/*"]"#, "");
            if one(&g, &arg).is_ok() {
                let n = lexical_normalize(&arg).unwrap_or_default();
                proptest::prop_assert!(Path::new(&n).starts_with("/srv/data"), "{arg:?} -> {n}");
                proptest::prop_assert!(!arg.starts_with('-'));
                proptest::prop_assert!(!arg.contains('\0'));
            }
            let any = exec_grant(r#"["*"]"#, "");
            if one(&any, &arg).is_ok() {
                proptest::prop_assert!(!arg.starts_with('-'));
                proptest::prop_assert!(!arg.split('/').any(is_dot_segment), "{arg:?}");
            }
        }
    }

    #[test]
    fn net_entries_grant_hosts_and_ports() {
        let p =
            Policy::parse("[net]\nallow = [\"db.internal:3306\", \"app:*\", \"dns.example\"]\n")
                .unwrap();
        assert!(p.net.allows("db.internal", Some(3306)).is_some());
        assert!(p.net.allows("db.internal", Some(22)).is_none());
        assert!(p.net.allows("db.internal", None).is_some());
        assert!(p.net.allows("app", Some(8080)).is_some());
        assert!(p.net.allows("dns.example", Some(53)).is_none());
        assert!(p.net.allows("other", None).is_none());
        assert!(Policy::parse("[net]\nallow = [\"db:http\"]\n").is_err());
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(ByteSize::parse("64 MiB").unwrap().0, 64 << 20);
        assert_eq!(ByteSize::parse("8MB").unwrap().0, 8_000_000);
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert!(ByteSize::parse("12 parsecs").is_err());
    }

    #[test]
    fn empty_policy_grants_nothing() {
        let p = Policy::parse("").unwrap();
        assert!(p.s3.is_empty() && p.db.is_empty() && p.http.allow.is_empty());
        assert_eq!(p.limits.memory.0, 64 << 20);
    }

    #[test]
    fn alias_needs_exactly_one_backend() {
        let err = Policy::parse("[s3.a]\naccess = [\"read\"]\n").unwrap_err();
        assert!(err.contains("needs either path"), "{err}");
        let err = Policy::parse("[s3.a]\npath = \"x\"\nbucket = \"b\"\naccess = [\"read\"]\n")
            .unwrap_err();
        assert!(err.contains("choose one"), "{err}");
    }

    #[test]
    fn url_prefix_matches_on_segment_boundaries() {
        let a = AllowedUrl::parse("http://127.0.0.1:3000/health").unwrap();
        assert!(a.matches("http", "127.0.0.1", 3000, "/health"));
        assert!(a.matches("http", "127.0.0.1", 3000, "/health/db"));
        assert!(!a.matches("http", "127.0.0.1", 3000, "/healthz"));
        assert!(!a.matches("https", "127.0.0.1", 3000, "/health"));
        assert!(!a.matches("http", "127.0.0.1", 3001, "/health"));
    }

    #[test]
    fn cidr_contains() {
        let n = IpNet::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(!n.contains("128.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(IpNet::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::literal("mysql://root:hunter2@db/x");
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        const ACCESS: [&str; 4] = ["read", "list", "write", "delete"];

        proptest! {
            /// Any text either parses or is refused with a message; it never panics.
            #[test]
            fn any_text_parses_or_is_refused(text in "\\PC{0,300}") {
                let _ = Policy::parse(&text);
            }

            /// Policy-shaped text with random keys, values and sections.
            #[test]
            fn policy_shaped_text_parses_or_is_refused(
                lines in proptest::collection::vec(
                    prop_oneof![
                        Just("[s3.a]".to_string()),
                        Just("[db.b]".to_string()),
                        Just("[exec.c]".to_string()),
                        Just("[http]".to_string()),
                        Just("[plugin]".to_string()),
                        "[a-z-]{1,12} = \"[ -~]{0,20}\"",
                        "[a-z-]{1,12} = \\[(\"[a-z/*.:-]{0,12}\", ?){0,3}\\]",
                        "[a-z-]{1,12} = (true|false|[0-9]{1,4})",
                    ],
                    0..12,
                )
            ) {
                let _ = Policy::parse(&lines.join("\n"));
            }

            /// An alias grants exactly the access modes it lists, nothing else.
            #[test]
            fn an_alias_grants_exactly_what_it_lists(mask in 1u8..16, path in "[a-z]{1,8}") {
                let listed: Vec<&str> = ACCESS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, a)| *a)
                    .collect();
                let text = format!(
                    "[s3.x]\npath = \"{path}\"\naccess = [{}]\n",
                    listed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")
                );
                let p = Policy::parse(&text).expect("valid policy");
                let g = &p.s3["x"];
                for (a, mode) in ACCESS.iter().zip([S3Access::Read, S3Access::List, S3Access::Write, S3Access::Delete]) {
                    prop_assert_eq!(g.allows(mode), listed.contains(a));
                }
                prop_assert!(p.db.is_empty() && p.exec.is_empty() && p.http.allow.is_empty());
            }
        }
    }
}
