//! Reports of a finished run or drill, for people who were not there: JUnit
//! XML for CI, Markdown and HTML with a timeline picture (SVG) of the steps
//! against their budgets and the RTO.

use crate::orchestrator::{ComponentResult, RunReport, StepResult};
use crate::text::{markdown as md, terminal, xml};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Finding key a step uses for the command a person would type to do the
/// same by hand (runbooks print it in the report).
pub const COMMAND: &str = "command";

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct ReportError {
    path: PathBuf,
    source: std::io::Error,
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    let err = |source| ReportError {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// Writes report.md, report.html and timeline.svg into `dir`.
pub fn write_reports(r: &RunReport, dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let files = [
        (dir.join("report.md"), markdown(r)),
        (dir.join("report.html"), html(r)),
        (dir.join("timeline.svg"), timeline_svg(r)),
    ];
    for (p, text) in &files {
        write(p, text)?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Writes JUnit XML to `path`.
pub fn write_junit(r: &RunReport, path: &Path) -> Result<(), ReportError> {
    write(path, &junit(&[r]))
}

fn secs(ms: u64) -> String {
    human(ms as f64 / 1000.0)
}

/// "850 ms", "12.3 s", "4 min 10 s".
pub fn human(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let m = (s / 60.0).floor();
        format!("{m:.0} min {:.0} s", s - m * 60.0)
    }
}

/// Why a step counts as failed in a report, if it does.
fn step_problem(s: &StepResult) -> Option<String> {
    match (s.outcome.as_str(), s.over_budget) {
        (_, true) => Some(format!(
            "took {} against a budget of {}",
            secs(s.duration_ms),
            human(f64::from(s.budget_s))
        )),
        ("failed", _) => Some(s.detail.clone()),
        _ => None,
    }
}

/// One line per target: (name, verdict: Ok/Err(why)/skip(why)).
fn targets(c: &ComponentResult) -> Vec<(String, Result<String, String>, bool)> {
    let rto = human(f64::from(c.rto_s));
    let rto_line = match (c.rto_met, c.recovery_s, c.status.as_str()) {
        (Some(true), Some(s), _) => (Ok(format!("recovered in {} (RTO {rto})", human(s))), false),
        (Some(false), Some(s), _) => (
            Err(format!("recovered in {}, over the RTO of {rto}", human(s))),
            false,
        ),
        (_, _, "undetected") => (Err("the disaster was never detected".to_string()), false),
        (_, _, "failed") => (Err("the component was not recovered".to_string()), false),
        _ => (Ok(format!("not measured: component {}", c.status)), true),
    };
    let rpo = human(f64::from(c.rpo_s));
    let rpo_line = match (c.rpo_met, c.achieved_rpo_s) {
        (Some(true), Some(s)) => (Ok(format!("lost {} of data (RPO {rpo})", human(s))), false),
        (Some(false), Some(s)) => (
            Err(format!("lost {} of data, over the RPO of {rpo}", human(s))),
            false,
        ),
        _ => (
            Ok("not measured: no data-at-disaster-ms / data-recovered-ms findings".to_string()),
            true,
        ),
    };
    vec![
        (format!("{} RTO", c.name), rto_line.0, rto_line.1),
        (format!("{} RPO", c.name), rpo_line.0, rpo_line.1),
    ]
}

/// JUnit XML: one suite per run, a test case per step and per target.
pub fn junit(reports: &[&RunReport]) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for r in reports {
        let mut cases = String::new();
        let (mut tests, mut failures, mut skipped) = (0, 0, 0);
        for s in &r.steps {
            tests += 1;
            let _ = write!(
                cases,
                "    <testcase classname=\"{}.steps\" name=\"{} {}\" time=\"{:.3}\">",
                xml(&r.scenario),
                xml(&s.phase),
                xml(&s.id),
                s.duration_ms as f64 / 1000.0
            );
            if let Some(why) = step_problem(s) {
                failures += 1;
                let _ = write!(cases, "<failure message=\"{}\"/>", xml(&why));
            } else if s.outcome == "skipped" {
                skipped += 1;
                let _ = write!(cases, "<skipped message=\"{}\"/>", xml(&s.detail));
            }
            cases.push_str("</testcase>\n");
        }
        for c in &r.components {
            for (name, verdict, skip) in targets(c) {
                tests += 1;
                let _ = write!(
                    cases,
                    "    <testcase classname=\"{}.targets\" name=\"{}\">",
                    xml(&r.scenario),
                    xml(&name)
                );
                match verdict {
                    Err(why) => {
                        failures += 1;
                        let _ = write!(cases, "<failure message=\"{}\"/>", xml(&why));
                    }
                    Ok(why) if skip => {
                        skipped += 1;
                        let _ = write!(cases, "<skipped message=\"{}\"/>", xml(&why));
                    }
                    Ok(what) => {
                        let _ = write!(cases, "<system-out>{}</system-out>", xml(&what));
                    }
                }
                cases.push_str("</testcase>\n");
            }
        }
        let _ = writeln!(
            o,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\" timestamp=\"{}\">",
            xml(&format!("{} ({})", r.scenario, r.mode)),
            r.duration_ms as f64 / 1000.0,
            xml(&r.started_at)
        );
        let _ = writeln!(
            o,
            "    <properties><property name=\"run_id\" value=\"{}\"/><property name=\"audit_log\" value=\"{}\"/><property name=\"component_sha256\" value=\"{}\"/></properties>",
            xml(&r.run_id),
            xml(&r.audit_log.display().to_string()),
            xml(&r.component_sha256)
        );
        o.push_str(&cases);
        o.push_str("  </testsuite>\n");
    }
    o.push_str("</testsuites>\n");
    o
}

fn verdict_text(r: &RunReport) -> &'static str {
    match r.outcome.as_str() {
        "recovered" if r.mode == "drill" => "the drill passed: every target was met",
        "recovered" => "recovered",
        "healthy" => "healthy: nothing to recover",
        "target-missed" => "a target was missed",
        "failed" if r.mode == "drill" => "the drill failed",
        "failed" => "failed",
        _ => "completed",
    }
}

/// The report in Markdown.
pub fn markdown(r: &RunReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# {} {}: {}\n", md(&r.scenario), r.mode, verdict_text(r));
    if !r.description.is_empty() {
        let _ = writeln!(o, "{}\n", md(&r.description));
    }
    let _ = writeln!(
        o,
        "Run `{}`, started {}, took {}; exit code {}. {} capability calls, {} denied. \
         Every step and call is in the audit log `{}` (check it with `drhost audit verify`).\n",
        r.run_id,
        r.started_at,
        secs(r.duration_ms),
        r.exit_code,
        r.calls,
        r.denied,
        r.audit_log.display()
    );
    o.push_str("## Targets\n\n| component | status | detected after | recovery | RTO | data lost | RPO |\n|---|---|---|---|---|---|---|\n");
    for c in &r.components {
        let mark = |m: Option<bool>| match m {
            Some(true) => " ✅",
            Some(false) => " ❌",
            None => "",
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {}{} | {} | {}{} | {} |",
            md(&c.name),
            c.status,
            c.detection_s.map_or("—".into(), human),
            c.recovery_s.map_or("—".into(), human),
            mark(c.rto_met),
            human(f64::from(c.rto_s)),
            c.achieved_rpo_s.map_or("—".into(), human),
            mark(c.rpo_met),
            human(f64::from(c.rpo_s)),
        );
    }
    o.push_str("\n## Timeline\n\n![steps against their budgets](timeline.svg)\n\n");
    o.push_str("## Steps\n\n| # | phase | step | component | outcome | at | took | budget | detail |\n|---|---|---|---|---|---|---|---|---|\n");
    for (i, s) in r.steps.iter().enumerate() {
        let detail = match step_problem(s) {
            Some(p) => p,
            None => s.detail.clone(),
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | +{} | {} | {} | {} |",
            i + 1,
            s.phase,
            md(&s.id),
            md(&s.component),
            s.outcome,
            secs(s.started_ms),
            secs(s.duration_ms),
            human(f64::from(s.budget_s)),
            md(&detail)
        );
    }
    let with_findings: Vec<&StepResult> =
        r.steps.iter().filter(|s| !s.findings.is_empty()).collect();
    if !with_findings.is_empty() {
        o.push_str("\n## What each step found\n");
        for s in with_findings {
            let _ = writeln!(o, "\n**{}**\n", md(&s.id));
            for (k, v) in &s.findings {
                if k == COMMAND {
                    // A fence longer than any run of backticks in the command.
                    let v = terminal(v);
                    let fence = "`".repeat(longest_run(&v, '`').max(2) + 1);
                    let _ = writeln!(o, "- by hand:\n\n  {fence}sh\n  {v}\n  {fence}");
                } else {
                    let _ = writeln!(o, "- {}: {}", md(k), md(v));
                }
            }
        }
    }
    o
}

fn longest_run(s: &str, c: char) -> usize {
    let (mut best, mut run) = (0, 0);
    for x in s.chars() {
        run = if x == c { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// The report as a standalone HTML page with the timeline inline.
pub fn html(r: &RunReport) -> String {
    let mut o = String::from("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    let _ = writeln!(
        o,
        "<title>{} {}</title>\n<style>body{{font:15px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}\
         th{{background:#f3f3f3}}.ok{{color:#17692e}}.bad{{color:#b00020;font-weight:600}}code,pre{{background:#f6f6f6;padding:1px 4px}}</style></head><body>",
        xml(&r.scenario),
        xml(&r.mode)
    );
    let _ = writeln!(
        o,
        "<h1>{} {}: <span class=\"{}\">{}</span></h1>",
        xml(&r.scenario),
        xml(&r.mode),
        if r.exit_code == 0 { "ok" } else { "bad" },
        xml(verdict_text(r))
    );
    if !r.description.is_empty() {
        let _ = writeln!(o, "<p>{}</p>", xml(&r.description));
    }
    let _ = writeln!(
        o,
        "<p>Run <code>{}</code>, started {}, took {}; exit code {}. {} capability calls, {} denied. Audit log: <code>{}</code>.</p>",
        xml(&r.run_id),
        xml(&r.started_at),
        secs(r.duration_ms),
        r.exit_code,
        r.calls,
        r.denied,
        xml(&r.audit_log.display().to_string())
    );
    o.push_str("<h2>Targets</h2><table><tr><th>component</th><th>status</th><th>detected after</th><th>recovery</th><th>RTO</th><th>data lost</th><th>RPO</th></tr>\n");
    for c in &r.components {
        let cls = |m: Option<bool>| match m {
            Some(true) => "ok",
            Some(false) => "bad",
            None => "",
        };
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            xml(&c.name),
            xml(&c.status),
            c.detection_s.map_or("—".into(), human),
            cls(c.rto_met),
            c.recovery_s.map_or("—".into(), human),
            human(f64::from(c.rto_s)),
            cls(c.rpo_met),
            c.achieved_rpo_s.map_or("—".into(), human),
            human(f64::from(c.rpo_s)),
        );
    }
    o.push_str("</table>\n<h2>Timeline</h2>\n");
    o.push_str(&timeline_svg(r));
    o.push_str("<h2>Steps</h2><table><tr><th>#</th><th>phase</th><th>step</th><th>component</th><th>outcome</th><th>at</th><th>took</th><th>budget</th><th>detail and findings</th></tr>\n");
    for (i, s) in r.steps.iter().enumerate() {
        let problem = step_problem(s);
        let mut detail = xml(problem.as_deref().unwrap_or(&s.detail));
        for (k, v) in &s.findings {
            if k == COMMAND {
                let _ = write!(detail, "<pre>{}</pre>", xml(v));
            } else {
                let _ = write!(detail, "<br>{}: {}", xml(k), xml(v));
            }
        }
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>+{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            xml(&s.phase),
            xml(&s.id),
            xml(&s.component),
            if problem.is_some() { "bad" } else { "ok" },
            xml(&s.outcome),
            secs(s.started_ms),
            secs(s.duration_ms),
            human(f64::from(s.budget_s)),
            detail
        );
    }
    o.push_str("</table></body></html>\n");
    o
}

/// The steps as bars on one time axis from the start of the run: each
/// step's budget in light grey from its start, the time it took in colour
/// over it, and each component's RTO as a dashed line from the moment the
/// clock started (the end of the injection in a drill, else detection).
pub fn timeline_svg(r: &RunReport) -> String {
    let row = 26.0;
    let left = 230.0;
    let width = 640.0;
    let top = 40.0;
    let origin_ms = r
        .steps
        .iter()
        .filter(|s| s.phase == "inject")
        .map(|s| s.started_ms + s.duration_ms)
        .max()
        .or_else(|| {
            r.steps
                .iter()
                .filter(|s| s.outcome == "detected")
                .map(|s| s.started_ms + s.duration_ms)
                .min()
        })
        .unwrap_or(0) as f64;
    let rto_max = r
        .components
        .iter()
        .map(|c| f64::from(c.rto_s) * 1000.0)
        .fold(0.0, f64::max);
    let span = r
        .steps
        .iter()
        .map(|s| s.started_ms as f64 + f64::from(s.budget_s) * 1000.0)
        .fold(origin_ms + rto_max, f64::max)
        .max(1.0);
    let x = |ms: f64| left + ms / span * width;
    let height = top + row * r.steps.len() as f64 + 50.0;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        left + width + 40.0
    );
    let _ = writeln!(
        o,
        "<text x=\"8\" y=\"20\" font-weight=\"bold\">{} — steps against their budgets (grey) and the RTO (dashed)</text>",
        xml(&r.scenario)
    );
    for (i, s) in r.steps.iter().enumerate() {
        let y = top + row * i as f64;
        let colour = match (s.outcome.as_str(), s.over_budget) {
            (_, true) | ("failed", _) => "#c62828",
            ("skipped", _) => "#9e9e9e",
            ("detected", _) => "#ef6c00",
            _ if s.phase == "inject" => "#6a1b9a",
            _ => "#2e7d32",
        };
        let bx = x(s.started_ms as f64);
        let bw = (f64::from(s.budget_s) * 1000.0 / span * width).max(1.0);
        let aw = (s.duration_ms as f64 / span * width).max(2.0);
        let _ = writeln!(
            o,
            "<text x=\"8\" y=\"{:.0}\">{} {}</text><rect x=\"{bx:.1}\" y=\"{:.0}\" width=\"{bw:.1}\" height=\"14\" fill=\"#e6e6e6\"/><rect x=\"{bx:.1}\" y=\"{:.0}\" width=\"{aw:.1}\" height=\"14\" fill=\"{colour}\"><title>{}: {} in {} of {}</title></rect>",
            y + 12.0,
            xml(&s.phase),
            xml(&s.id),
            y + 1.0,
            y + 1.0,
            xml(&s.id),
            xml(&s.outcome),
            secs(s.duration_ms),
            human(f64::from(s.budget_s))
        );
    }
    let bottom = top + row * r.steps.len() as f64;
    for c in &r.components {
        let rx = x(origin_ms + f64::from(c.rto_s) * 1000.0);
        let _ = writeln!(
            o,
            "<line x1=\"{rx:.1}\" y1=\"{:.0}\" x2=\"{rx:.1}\" y2=\"{bottom:.0}\" stroke=\"#b00020\" stroke-dasharray=\"5,4\"/><text x=\"{rx:.1}\" y=\"{:.0}\" fill=\"#b00020\" text-anchor=\"end\">RTO {} {}</text>",
            top - 6.0,
            bottom + 16.0,
            xml(&c.name),
            human(f64::from(c.rto_s))
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{left}\" y1=\"{:.0}\" x2=\"{:.0}\" y2=\"{:.0}\" stroke=\"#444\"/><text x=\"{left}\" y=\"{:.0}\">0</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
        bottom + 24.0,
        left + width,
        bottom + 24.0,
        bottom + 40.0,
        left + width,
        bottom + 40.0,
        human(span / 1000.0)
    );
    o.push_str("</svg>\n");
    o
}
