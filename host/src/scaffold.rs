//! `drhost new NAME --lang rust|python|js`: a plugin project that builds
//! and passes `drhost test` as written: the source, the WIT it builds
//! against, a policy with the grants commented, a README and a build script.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            other => Err(format!("unknown language {other:?}: rust, python or js")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error("{0}")]
    Invalid(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The WIT a plugin builds against, as drhost was built with it.
const WIT: &[(&str, &str)] = &[
    ("drhost.wit", include_str!("../../wit/drhost.wit")),
    (
        "deps/cli/cli.wit",
        include_str!("../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../wit/deps/http/http.wit"),
    ),
    ("deps/io/io.wit", include_str!("../../wit/deps/io/io.wit")),
    (
        "deps/random/random.wit",
        include_str!("../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../wit/deps/sockets/sockets.wit"),
    ),
];

const WORLD: &str = "drhost:plugin/scenario@0.2.0";

/// The Rust SDK, vendored into Rust projects as `drhost-plugin/` until it is
/// published, so a project builds outside this repository.
const SDK: &[(&str, &str)] = &[
    ("lib.rs", include_str!("../../plugins/sdk/src/lib.rs")),
    ("error.rs", include_str!("../../plugins/sdk/src/error.rs")),
    ("health.rs", include_str!("../../plugins/sdk/src/health.rs")),
    ("http.rs", include_str!("../../plugins/sdk/src/http.rs")),
    (
        "listing.rs",
        include_str!("../../plugins/sdk/src/listing.rs"),
    ),
    (
        "scenario.rs",
        include_str!("../../plugins/sdk/src/scenario.rs"),
    ),
    ("smoke.rs", include_str!("../../plugins/sdk/src/smoke.rs")),
    ("time.rs", include_str!("../../plugins/sdk/src/time.rs")),
    ("wait.rs", include_str!("../../plugins/sdk/src/wait.rs")),
];

const SDK_CARGO: &str = r#"[package]
name = "drhost-plugin"
version = "0.1.0"
edition = "2024"
publish = false
description = "The drhost plugin SDK, vendored by drhost new"

[dependencies]
wit-bindgen = { version = "0.63", default-features = false, features = ["macros", "realloc"] }
"#;

/// Writes the project into `dir` (which must not exist or be empty) and
/// returns the files written.
pub fn create(dir: &Path, name: &str, lang: Lang) -> Result<Vec<PathBuf>, ScaffoldError> {
    let ok = !name.is_empty()
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        return Err(ScaffoldError::Invalid(format!(
            "plugin name {name:?}: lowercase letters, digits and '-', starting with a letter"
        )));
    }
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(ScaffoldError::Invalid(format!(
            "{} exists and is not empty",
            dir.display()
        )));
    }
    let snake = name.replace('-', "_");
    // Named like the project, so `drhost run NAME.wasm` finds NAME.policy.toml beside it.
    let wasm = format!("{name}.wasm");
    let mut files: Vec<(String, String, bool)> = WIT
        .iter()
        .map(|(p, text)| (format!("wit/{p}"), (*text).to_string(), false))
        .collect();
    files.push((
        format!("{name}.policy.toml"),
        POLICY.replace("{name}", name),
        false,
    ));
    let (build, source): (&str, Vec<(String, String, bool)>) = match lang {
        Lang::Rust => (
            "cargo build --release --target wasm32-wasip2 && cp target/wasm32-wasip2/release/{snake}.wasm {wasm}",
            vec![
                (
                    "Cargo.toml".into(),
                    RUST_CARGO.replace("{name}", name),
                    false,
                ),
                ("src/lib.rs".into(), RUST_LIB.replace("{name}", name), false),
                ("drhost-plugin/Cargo.toml".into(), SDK_CARGO.into(), false),
                (
                    "build.sh".into(),
                    format!(
                        "#!/usr/bin/env bash\n# Builds {wasm}.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\nrustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2\ncargo build --release --target wasm32-wasip2\ncp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{snake}.wasm\" {wasm}\n"
                    ),
                    true,
                ),
            ],
        ),
        Lang::Python => (
            "./build.sh",
            vec![
                ("app.py".into(), PY_APP.replace("{name}", name), false),
                (
                    "build.sh".into(),
                    format!(
                        "#!/usr/bin/env bash\n# Builds {wasm} with componentize-py 0.25.1 (from PyPI).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\ncommand -v componentize-py >/dev/null && componentize-py --version | grep -q 0.25.1 \\\n    || python3 -m pip install --quiet componentize-py==0.25.1\ncomponentize-py -d wit -w {WORLD} componentize app -o {wasm}\n"
                    ),
                    true,
                ),
            ],
        ),
        Lang::Js => (
            "./build.sh",
            vec![
                ("scenario.js".into(), JS_APP.replace("{name}", name), false),
                (
                    "package.json".into(),
                    JS_PACKAGE.replace("{name}", name),
                    false,
                ),
                (
                    "build.sh".into(),
                    format!(
                        "#!/usr/bin/env bash\n# Builds {wasm} with componentize-js 0.23.0 (from npm), called directly.\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\nbin=${{COMPONENTIZE_JS:-./node_modules/.bin/componentize-js}}\n[ -x \"$bin\" ] || npm install --no-audit --no-fund --silent\n\"$bin\" scenario.js --wit wit -n {WORLD} -o {wasm}\n"
                    ),
                    true,
                ),
            ],
        ),
    };
    files.extend(source);
    if lang == Lang::Rust {
        // The SDK finds the interface one level up: the project's own wit/.
        files.extend(SDK.iter().map(|(f, text)| {
            let text = text.replace("path: \"../../wit\"", "path: \"../wit\"");
            (format!("drhost-plugin/src/{f}"), text, false)
        }));
    }
    let build = build.replace("{snake}", &snake).replace("{wasm}", &wasm);
    files.push((
        "README.md".into(),
        README
            .replace("{name}", name)
            .replace("{build}", &build)
            .replace("{wasm}", &wasm),
        false,
    ));
    let mut written = Vec::new();
    for (rel, text, executable) in files {
        let path = dir.join(&rel);
        let io = |source| ScaffoldError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, text).map_err(io)?;
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        written.push(path);
    }
    Ok(written)
}

const POLICY: &str = r#"# Policy for {name}: the plugin gets nothing that is not granted here.
# Uncomment what the scenario needs; docs/policy.md describes every key.

# [plugin]
# sha256 = "…"              # pin the exact component you reviewed

# [s3.primary]              # an alias the plugin names; the bucket and keys stay here
# bucket = "my-bucket"
# prefix = "app/"
# access = ["read", "list"] # add "write", "delete" for recovery steps

# [db.app]                  # a connection the plugin names; the URL stays here
# url = "env:APP_DB_URL"
# access = "read-only"      # a read-only account; drhost checks its privileges

# [http]
# allow = ["https://status.example.com/health"]

# [backup.app]              # a source of drhost.toml
# access = ["list", "verify"]
"#;

const README: &str = r#"# {name}

A drhost scenario plugin.

Build:

```sh
{build}
```

Check it against the conformance suite, then run it:

```sh
drhost test {wasm} --policy {name}.policy.toml
drhost run {wasm} --policy {name}.policy.toml
```

The interface is in `wit/drhost.wit` (world `drhost:plugin/scenario@0.2.0`),
every function documented there. Grant what the steps need in
`{name}.policy.toml`; a step that calls a capability it was not granted gets a
`denied` error naming the grant that would allow it.
"#;

const RUST_CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
drhost-plugin = { path = "drhost-plugin" }

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"

# A project of its own, even when created inside another workspace.
[workspace]
"#;

const RUST_LIB: &str = r#"//! The {name} scenario: detect, and report what was found.
//!
//! Written with the drhost SDK (`drhost-plugin/`, vendored): the metadata
//! reads like the plan, and a step is a function that returns a StepResult.

use drhost_plugin::error::{StepResult, outcome};
use drhost_plugin::scenario::{Scenario, component, detect, minutes};
use drhost_plugin::{ComponentKind, Finding, Guest, Outcome, Priority, ScenarioInfo, finding, info};

struct Plugin;

fn scenario() -> Scenario {
    Scenario::new("{name}", "0.1.0")
        .about("Checks the service and reports what it finds")
        .component(
            component("service", ComponentKind::Application, Priority::P1)
                .rto(minutes(30))
                .rpo(minutes(60))
                .about("the service this scenario protects"),
        )
        .step(
            detect("check", "service")
                .within(minutes(1))
                .about("confirm the service is healthy"),
        )
}

fn check() -> StepResult {
    info("checking the service");
    Ok(Outcome::Ok(vec![finding("status", "healthy")]))
}

impl Guest for Plugin {
    fn info() -> ScenarioInfo {
        scenario().build()
    }

    fn run_step(id: String, _context: Vec<Finding>) -> Outcome {
        outcome(match id.as_str() {
            "check" => check(),
            other => Err(format!("unknown step {other}").into()),
        })
    }
}

drhost_plugin::export!(Plugin with_types_in drhost_plugin::bindings);

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_is_valid() {
        assert_eq!(super::scenario().problems(), Vec::<String>::new());
    }
}
"#;

const PY_APP: &str = r#""""The {name} scenario: detect, and report what was found.
Built with componentize-py against wit/ (see build.sh)."""

from wit_world import exports
from wit_world.imports import drhost_plugin_types as t
from wit_world.imports import log


class Plugin(exports.Plugin):
    def info(self) -> t.ScenarioInfo:
        return t.ScenarioInfo(
            name="{name}",
            version="0.1.0",
            description="Checks the service and reports what it finds",
            components=[
                t.Component(
                    name="service",
                    kind=t.ComponentKind.APPLICATION,
                    priority=t.Priority.P1,
                    rto_seconds=1800,
                    rpo_seconds=3600,
                    description="the service this scenario protects",
                )
            ],
            steps=[
                t.Step(
                    id="check",
                    phase=t.Phase.DETECT,
                    component="service",
                    budget_seconds=60,
                    mutating=False,
                    description="confirm the service is healthy",
                )
            ],
        )

    def run_step(self, id: str, context: list[t.Finding]) -> t.Outcome:
        if id == "check":
            log.log(log.Level.INFO, "checking the service")
            return t.Outcome_Ok([t.Finding(key="status", value="healthy")])
        return t.Outcome_Failed(f"unknown step {id}")
"#;

const JS_APP: &str = r#"// The {name} scenario: detect, and report what was found.
// Built with componentize-js against wit/ (see build.sh).
import { log } from 'drhost:plugin/log@0.2.0';

export const plugin = {
  info() {
    return {
      name: '{name}',
      version: '0.1.0',
      description: 'Checks the service and reports what it finds',
      components: [
        {
          name: 'service',
          kind: 'application',
          priority: 'p1',
          rtoSeconds: 1800,
          rpoSeconds: 3600,
          description: 'the service this scenario protects',
        },
      ],
      steps: [
        {
          id: 'check',
          phase: 'detect',
          component: 'service',
          budgetSeconds: 60,
          mutating: false,
          description: 'confirm the service is healthy',
        },
      ],
    };
  },

  runStep(id, context) {
    if (id === 'check') {
      log('info', 'checking the service');
      return { tag: 'ok', val: [{ key: 'status', value: 'healthy' }] };
    }
    return { tag: 'failed', val: `unknown step ${id}` };
  },
};
"#;

const JS_PACKAGE: &str = r#"{
  "name": "{name}",
  "private": true,
  "type": "module",
  "devDependencies": {
    "@bytecodealliance/componentize-js": "0.23.0",
    "@bytecodealliance/preview2-shim": "0.25.0"
  }
}
"#;
