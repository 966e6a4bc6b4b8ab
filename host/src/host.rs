//! The store's data and the WIT host bindings: every import a plugin calls
//! lands here and goes through the gate.

use crate::bindings::CapError;
use crate::bindings::drhost::plugin::{backup, clock, db, exec, log, net, s3, state, types};
use crate::caps::backup as backupcap;
use crate::caps::http::Hooks;
use crate::caps::output::CappedOutput;
use crate::caps::s3 as s3cap;
use crate::caps::{Call, Caps, Decision, Grant};
use crate::policy::{BackupAccess, S3Access};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

type HostResult<T> = wasmtime::Result<Result<T, CapError>>;

/// Refuses linear memory beyond the policy's limit and remembers that it did,
/// so a guest that dies of it is reported as out of memory, not as a riddle.
pub struct MemLimiter {
    pub limit: usize,
    pub hit: bool,
}

impl wasmtime::ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// What one store (one step, or the `info` call) holds.
pub struct HostState {
    pub caps: Arc<Caps>,
    pub limiter: MemLimiter,
    pub stdout: CappedOutput,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: Hooks,
    table: ResourceTable,
    step_start: Instant,
    budget: Duration,
}

impl HostState {
    pub fn new(caps: Arc<Caps>, budget: Duration) -> Self {
        let limit = usize::try_from(caps.policy.limits.memory.0).unwrap_or(usize::MAX);
        let stdout = CappedOutput::new(
            usize::try_from(caps.policy.limits.output_bytes.0).unwrap_or(64 << 10),
        );
        // Nothing of WASI is granted: no preopens, no environment, no
        // arguments, no sockets. Output goes to a bounded buffer.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stdout.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        HostState {
            hooks: Hooks {
                caps: Arc::clone(&caps),
            },
            caps,
            limiter: MemLimiter { limit, hit: false },
            stdout,
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            step_start: Instant::now(),
            budget,
        }
    }

    fn remaining(&self) -> Duration {
        self.budget.saturating_sub(self.step_start.elapsed())
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        // One line on the terminal, whatever the guest wrote.
        let shown = crate::text::terminal(&message);
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", "{shown}"),
            log::Level::Debug => tracing::debug!(target: "plugin", "{shown}"),
            log::Level::Info => tracing::info!(target: "plugin", "{shown}"),
            log::Level::Warn => tracing::warn!(target: "plugin", "{shown}"),
            log::Level::Error => tracing::error!(target: "plugin", "{shown}"),
        }
        let mut f = serde_json::Map::new();
        f.insert("level".into(), format!("{level:?}").to_lowercase().into());
        f.insert("message".into(), message.into());
        self.caps.gate.record("log", f);
        Ok(())
    }
}

impl clock::Host for HostState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(crate::clock::now_ms())
    }

    async fn step_elapsed_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.step_start.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    async fn step_remaining_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.remaining().as_millis()).unwrap_or(u64::MAX))
    }

    async fn sleep_ms(&mut self, millis: u32) -> wasmtime::Result<u32> {
        // Leave a little of the budget so the step can still report.
        let room = self.remaining().saturating_sub(Duration::from_millis(50));
        let d = Duration::from_millis(millis.into()).min(room);
        tokio::time::sleep(d).await;
        Ok(u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
    }
}

impl state::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("state", "get", key.clone());
        let r = caps
            .gate
            .call(
                call,
                Decision::Allow(Grant::always("state (always granted)")),
                || async { Ok(caps.state.get(&key)) },
            )
            .await;
        Ok(r.unwrap_or(None))
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> HostResult<()> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("state", "set", key.clone()).arg("bytes", value.len());
        Ok(caps
            .gate
            .call(
                call,
                Decision::Allow(Grant::always("state (always granted)")),
                || async { caps.state.set(&key, value) },
            )
            .await)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("state", "delete", key.clone());
        let r = caps
            .gate
            .call(
                call,
                Decision::Allow(Grant::always("state (always granted)")),
                || async { Ok(caps.state.delete(&key)) },
            )
            .await;
        Ok(r.unwrap_or(false))
    }

    async fn keys(&mut self) -> wasmtime::Result<Vec<String>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("state", "keys", "");
        let r = caps
            .gate
            .call(
                call,
                Decision::Allow(Grant::always("state (always granted)")),
                || async { Ok(KeyList(caps.state.keys())) },
            )
            .await;
        Ok(r.map(|k| k.0).unwrap_or_default())
    }
}

/// The state store's keys, counted in the audit record.
struct KeyList(Vec<String>);

impl crate::caps::Summarize for KeyList {
    fn moved(&self) -> crate::caps::Moved {
        let mut m = crate::caps::Moved::default();
        m.extra.insert("keys".into(), self.0.len().into());
        m
    }
}

/// Resolves an alias for an operation, or returns the denial the gate records.
macro_rules! alias_or_deny {
    ($caps:expr, $call:expr, $alias:expr, $access:expr, $op:expr) => {
        match $caps.s3.alias(&$alias, $access, $op) {
            Ok(a) => a,
            Err(deny) => {
                return Ok($caps
                    .gate
                    .call($call, deny, || async {
                        Err(CapError::Denied(String::new()))
                    })
                    .await);
            }
        }
    };
}

impl s3::Host for HostState {
    async fn head(&mut self, alias: String, key: String) -> HostResult<Option<s3::ObjectInfo>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "head", format!("{alias}:{key}"));
        let a = alias_or_deny!(caps, call, alias, S3Access::Read, "head");
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::Read, "head"), || async {
                let full = a.key(&key)?;
                Ok(a.backend.head(&full).await?.map(|m| m.to_wit(a)))
            })
            .await)
    }

    async fn get(&mut self, alias: String, key: String) -> HostResult<Vec<u8>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "get", format!("{alias}:{key}"));
        let a = alias_or_deny!(caps, call, alias, S3Access::Read, "get");
        let max = caps.s3.max_guest_bytes;
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::Read, "get"), || async {
                let full = a.key(&key)?;
                s3cap::read_capped(a, &full, None, max)
                    .await
                    .map_err(|e| relative_error(e, a))
            })
            .await)
    }

    async fn put(
        &mut self,
        alias: String,
        key: String,
        body: Vec<u8>,
    ) -> HostResult<s3::ObjectInfo> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "put", format!("{alias}:{key}"))
            .arg("bytes", body.len())
            .arg("sha256", crate::digest::sha256_hex(&body))
            .mutating()
            .refused_needs(format!("s3.{alias} write-once=false"));
        let a = alias_or_deny!(caps, call, alias, S3Access::Write, "put");
        let max = caps.s3.max_guest_bytes;
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::Write, "put"), || async {
                if body.len() as u64 > max {
                    return Err(CapError::TooLarge(format!(
                        "a put of {} bytes is over the {max}-byte limit for data from the plugin ([limits] max-guest-bytes); write big objects with s3.copy",
                        body.len()
                    )));
                }
                let full = a.key(&key)?;
                a.check_new(&full, &key).await?;
                Ok(a.backend.put(&full, body).await?.to_wit(a))
            })
            .await)
    }

    async fn list_objects(
        &mut self,
        alias: String,
        prefix: String,
        token: Option<String>,
        max_keys: u32,
    ) -> HostResult<s3::ListPage> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "list", format!("{alias}:{prefix}"));
        let a = alias_or_deny!(caps, call, alias, S3Access::List, "list");
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::List, "list"), || async {
                let full = a.prefix(&prefix)?;
                let page = a
                    .backend
                    .list(&full, token.as_deref(), max_keys.clamp(1, 1000))
                    .await?;
                Ok(s3::ListPage {
                    objects: page.objects.iter().map(|m| m.to_wit(a)).collect(),
                    next_token: page.next_token,
                })
            })
            .await)
    }

    async fn checksum(&mut self, alias: String, key: String) -> HostResult<String> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "checksum", format!("{alias}:{key}"));
        let a = alias_or_deny!(caps, call, alias, S3Access::Read, "checksum");
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::Read, "checksum"), || async {
                let full = a.key(&key)?;
                s3cap::checksum(a, &full)
                    .await
                    .map_err(|e| relative_error(e, a))
            })
            .await
            .map(|c| c.hex))
    }

    async fn copy(
        &mut self,
        src_alias: String,
        src_key: String,
        dst_alias: String,
        dst_key: String,
    ) -> HostResult<s3::ObjectInfo> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new(
            "s3",
            "copy",
            format!("{src_alias}:{src_key} -> {dst_alias}:{dst_key}"),
        )
        .mutating()
        .refused_needs(format!("s3.{dst_alias} write-once=false"));
        let src = alias_or_deny!(caps, call, src_alias, S3Access::Read, "copy");
        let dst = alias_or_deny!(caps, call, dst_alias, S3Access::Write, "copy");
        let decision = src
            .decide(S3Access::Read, "copy")
            .and(dst.decide(S3Access::Write, "copy"));
        Ok(caps
            .gate
            .call(call, decision, || async {
                let from = src.key(&src_key)?;
                let to = dst.key(&dst_key)?;
                dst.check_new(&to, &dst_key).await?;
                let meta = s3cap::copy(src, &from, dst, &to)
                    .await
                    .map_err(|e| relative_error(e, src))?;
                Ok(meta.to_wit(dst))
            })
            .await)
    }

    async fn delete(&mut self, alias: String, key: String) -> HostResult<()> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "delete", format!("{alias}:{key}")).mutating();
        let a = alias_or_deny!(caps, call, alias, S3Access::Delete, "delete");
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::Delete, "delete"), || async {
                let full = a.key(&key)?;
                Ok(a.backend.delete(&full).await?)
            })
            .await)
    }

    async fn list_versions(
        &mut self,
        alias: String,
        prefix: String,
        token: Option<String>,
        max_keys: u32,
    ) -> HostResult<s3::VersionPage> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "list-versions", format!("{alias}:{prefix}"));
        let a = alias_or_deny!(caps, call, alias, S3Access::List, "list-versions");
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::List, "list-versions"), || async {
                let full = a.prefix(&prefix)?;
                let page = a
                    .backend
                    .list_versions(&full, token.as_deref(), max_keys.clamp(1, 1000))
                    .await?;
                Ok(s3::VersionPage {
                    versions: page
                        .versions
                        .into_iter()
                        .filter_map(|v| {
                            Some(s3::VersionInfo {
                                key: a.relative(&v.key)?,
                                version_id: v.version_id,
                                size: v.size,
                                last_modified_ms: v.last_modified_ms,
                                is_latest: v.is_latest,
                                delete_marker: v.delete_marker,
                            })
                        })
                        .collect(),
                    next_token: page.next_token,
                })
            })
            .await)
    }

    async fn get_version(
        &mut self,
        alias: String,
        key: String,
        version_id: String,
    ) -> HostResult<Vec<u8>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("s3", "get-version", format!("{alias}:{key}"))
            .arg("version", version_id.clone());
        let a = alias_or_deny!(caps, call, alias, S3Access::Read, "get-version");
        let max = caps.s3.max_guest_bytes;
        Ok(caps
            .gate
            .call(call, a.decide(S3Access::Read, "get-version"), || async {
                let full = a.key(&key)?;
                s3cap::read_capped(a, &full, Some(&version_id), max)
                    .await
                    .map_err(|e| relative_error(e, a))
            })
            .await)
    }
}

/// Rewrites "not found" on a full key into the plugin's relative key.
fn relative_error(e: CapError, a: &s3cap::Alias) -> CapError {
    match e {
        CapError::NotFound(m) => {
            let prefix = &a.grant.prefix;
            let m = if prefix.is_empty() {
                m
            } else {
                m.replace(prefix.as_str(), "")
            };
            CapError::NotFound(format!("{m} (alias {:?})", a.name))
        }
        other => other,
    }
}

/// SQL text for the audit record: the statement, shortened; parameters are
/// counted, not recorded, since they may hold personal data.
fn sql_call(op: &'static str, conn: &str, sql: &str, params: usize) -> Call {
    let mut text: String = sql.chars().take(500).collect();
    if text.len() < sql.len() {
        text.push('…');
    }
    Call::new("db", op, conn.to_string())
        .arg("sql", text)
        .arg("params", params)
}

impl db::Host for HostState {
    async fn query(
        &mut self,
        connection: String,
        sql: String,
        params: Vec<db::Value>,
    ) -> HostResult<db::Rows> {
        let caps = Arc::clone(&self.caps);
        let call = sql_call("query", &connection, &sql, params.len())
            .refused_needs(format!("db.{connection} (the database refused it)"));
        let decision = caps.db.decide(&connection, "query", false);
        // In plan mode, `drhost test`, steps declared not mutating and phases
        // where the grant may not write, the query runs in the engine's
        // read-only mode, whatever its text says.
        let read_only = caps.gate.read_only(&decision);
        let time = self.remaining();
        Ok(caps
            .gate
            .call(call, decision, || {
                caps.db.query(&connection, &sql, &params, read_only, time)
            })
            .await)
    }

    async fn execute(
        &mut self,
        connection: String,
        sql: String,
        params: Vec<db::Value>,
    ) -> HostResult<u64> {
        let caps = Arc::clone(&self.caps);
        let call = sql_call("execute", &connection, &sql, params.len())
            .mutating()
            .refused_needs(format!("db.{connection} (the database refused it)"));
        let decision = caps.db.decide(&connection, "execute", true);
        let time = self.remaining();
        Ok(caps
            .gate
            .call(call, decision, || {
                caps.db.execute(&connection, &sql, &params, time)
            })
            .await)
    }

    async fn invariants(&mut self, connection: String) -> HostResult<Vec<db::Invariant>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("db", "invariants", connection.clone());
        let decision = caps.db.decide(&connection, "invariants", false);
        let time = self.remaining();
        Ok(caps
            .gate
            .call(call, decision, || async {
                Ok(caps
                    .db
                    .invariants(&connection, time)
                    .await?
                    .into_iter()
                    .map(|(name, violations)| db::Invariant { name, violations })
                    .collect::<Vec<_>>())
            })
            .await)
    }

    async fn ping(&mut self, connection: String) -> HostResult<u64> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("db", "ping", connection.clone());
        let decision = caps.db.decide(&connection, "ping", false);
        Ok(caps
            .gate
            .call(call, decision, || caps.db.ping(&connection))
            .await)
    }
}

impl backup::Host for HostState {
    async fn create(
        &mut self,
        source: String,
        kind: backup::BackupKind,
    ) -> HostResult<backup::BackupInfo> {
        let caps = Arc::clone(&self.caps);
        let kind = backupcap::kind_from_wit(kind);
        let call = Call::new("backup", "create", source.clone())
            .arg("kind", kind.to_string())
            .mutating();
        let decision = caps.backup.decide(&source, BackupAccess::Create, "create");
        Ok(caps
            .gate
            .call(call, decision, || async {
                let b = engine(&caps)?;
                let r = b.create(&source, kind).await?;
                let done = r
                    .targets
                    .iter()
                    .filter(|t| t.error.is_none())
                    .map(|t| t.target.clone())
                    .collect();
                Ok(backupcap::info(&r.manifest, done))
            })
            .await)
    }

    async fn list_backups(&mut self, source: String) -> HostResult<Vec<backup::BackupInfo>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("backup", "list", source.clone());
        let decision = caps.backup.decide(&source, BackupAccess::List, "list");
        Ok(caps
            .gate
            .call(call, decision, || async {
                Ok(backupcap::merge(engine(&caps)?.list(Some(&source)).await?))
            })
            .await)
    }

    async fn verify(
        &mut self,
        source: String,
        id: String,
        target: Option<String>,
    ) -> HostResult<Vec<backup::VerifyReport>> {
        let caps = Arc::clone(&self.caps);
        let mut call = Call::new("backup", "verify", source.clone())
            .arg("id", id.clone())
            .scratch();
        if let Some(t) = &target {
            call = call.arg("target", t.clone());
        }
        let decision = caps.backup.decide(&source, BackupAccess::Verify, "verify");
        Ok(caps
            .gate
            .call(call, decision, || async {
                let targets: Vec<String> = target.into_iter().collect();
                let reports = engine(&caps)?.verify(&source, &id, &targets).await?;
                Ok(reports.iter().map(backupcap::report).collect())
            })
            .await)
    }

    async fn restore(
        &mut self,
        source: String,
        id: String,
        to: String,
        point_in_time: Option<String>,
    ) -> HostResult<backup::RestoreReport> {
        let caps = Arc::clone(&self.caps);
        let mut call = Call::new("backup", "restore", source.clone())
            .arg("id", id.clone())
            .arg("to", to.clone())
            .mutating();
        if let Some(t) = &point_in_time {
            call = call.arg("point_in_time", t.clone());
        }
        let decision = caps.backup.decide_restore(&source, &to);
        Ok(caps
            .gate
            .call(call, decision, || async {
                let r = engine(&caps)?
                    .restore(&source, &id, &to, None, point_in_time.as_deref())
                    .await?;
                Ok(backupcap::restored(&r))
            })
            .await)
    }

    async fn restore_skipping(
        &mut self,
        source: String,
        id: String,
        to: String,
        point_in_time: String,
        resume_at: String,
    ) -> HostResult<backup::RestoreReport> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("backup", "restore-skipping", source.clone())
            .arg("id", id.clone())
            .arg("to", to.clone())
            .arg("point_in_time", point_in_time.clone())
            .arg("resume_at", resume_at.clone())
            .mutating();
        let decision = caps.backup.decide_restore(&source, &to);
        Ok(caps
            .gate
            .call(call, decision, || async {
                let r = engine(&caps)?
                    .restore_skipping(
                        &source,
                        &id,
                        &to,
                        None,
                        Some(&point_in_time),
                        Some(&resume_at),
                    )
                    .await?;
                Ok(backupcap::restored(&r))
            })
            .await)
    }
}

impl exec::Host for HostState {
    async fn run(&mut self, name: String, args: Vec<String>) -> HostResult<exec::ExecResult> {
        let caps = Arc::clone(&self.caps);
        let mut call = Call::new("exec", "run", name.clone()).arg("args", args.clone());
        // Every run changes things unless the operator declared the program read-only.
        if !caps.exec.grants.get(&name).is_some_and(|g| g.read_only) {
            call = call.mutating();
        }
        let decision = caps.exec.decide(&name, &args);
        let remaining = self.remaining();
        Ok(caps
            .gate
            .call(call, decision, || caps.exec.run(&name, &args, remaining))
            .await
            .map(|o| exec::ExecResult {
                exit_code: o.exit_code,
                stdout: o.stdout,
                stderr: o.stderr,
                truncated: o.truncated,
                duration_ms: o.duration_ms,
            }))
    }
}

impl net::Host for HostState {
    async fn resolve(&mut self, host: String) -> HostResult<Vec<String>> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("net", "resolve", host.clone());
        let decision = caps.net.decide(&host, None);
        Ok(caps
            .gate
            .call(call, decision, || caps.net.resolve(&host))
            .await)
    }

    async fn probe_tcp(&mut self, host: String, port: u16, timeout_ms: u32) -> HostResult<u64> {
        let caps = Arc::clone(&self.caps);
        let call = Call::new("net", "probe-tcp", format!("{host}:{port}"));
        let decision = caps.net.decide(&host, Some(port));
        let timeout = Duration::from_millis(timeout_ms.into()).min(self.remaining());
        Ok(caps
            .gate
            .call(call, decision, || caps.net.probe(&host, port, timeout))
            .await)
    }
}

/// The backup engine of this run (granted sources imply it was configured).
fn engine(caps: &Caps) -> Result<&crate::backup::Backups, CapError> {
    caps.backup.backups.as_deref().ok_or_else(|| {
        CapError::Unavailable("no backup configuration (drhost.toml) was given to this run".into())
    })
}
