//! `drhost report`: the plan's "Disaster Recovery Metrics" table, target
//! against actual, and the history behind it (Markdown, JSON, or HTML with
//! charts).

use super::metrics::{Snapshot, ratio};
use crate::backup::config::Config;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: &'static str,
    pub target: String,
    pub actual: String,
    /// None: nothing measured in the window.
    pub met: Option<bool>,
    /// What the actual value is made of.
    pub basis: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrReport {
    pub since: String,
    pub until: String,
    pub rows: Vec<Row>,
    pub snapshot: Snapshot,
    pub backups: Vec<super::store::BackupRow>,
    pub verifications: Vec<super::store::VerificationRow>,
    pub recoveries: Vec<super::store::RecoveryRow>,
    pub jobs: Vec<super::store::JobRow>,
    /// (time ms, worst recovery point s) samples over the window.
    pub recovery_point_series: Vec<(i64, f64)>,
}

fn pct(r: f64) -> String {
    format!("{:.2}%", r * 100.0)
}

fn mins(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

impl DrReport {
    pub fn build(s: Snapshot, config: &Config) -> DrReport {
        let o = &config.objectives;
        let mut rows = Vec::new();
        let (ok, all) = s.backup_success();
        rows.push(Row {
            metric: "Backup Success Rate",
            target: format!("{}%", o.backup_success_rate),
            actual: ratio(ok, all).map(pct).unwrap_or_else(|| "-".into()),
            met: ratio(ok, all).map(|r| r * 100.0 >= o.backup_success_rate),
            basis: format!("{ok} of {all} backups succeeded"),
        });
        let (ok, all) = s.verification_success();
        rows.push(Row {
            metric: "Backup Verification Rate",
            target: format!("{}%", o.verification_rate),
            actual: ratio(ok, all).map(pct).unwrap_or_else(|| "-".into()),
            met: ratio(ok, all).map(|r| r * 100.0 >= o.verification_rate),
            basis: format!("{ok} of {all} verifications (11-point checklist) passed"),
        });
        for (metric, kinds, target) in [
            (
                "Recovery Time (Database)",
                &["database"][..],
                o.recovery_time_database.0,
            ),
            (
                "Recovery Time (Application)",
                &["application"][..],
                o.recovery_time_application.0,
            ),
        ] {
            let t = target.as_secs_f64();
            let got = s.recovery_time(kinds);
            rows.push(Row {
                metric,
                target: format!("< {}", mins(t)),
                actual: got
                    .as_ref()
                    .map(|(_, v)| mins(*v))
                    .unwrap_or_else(|| "-".into()),
                met: got.as_ref().map(|(_, v)| *v < t),
                basis: got
                    .map(|(c, _)| {
                        let st = &s.components[&c];
                        format!("{c}, {} at {}", st.test, when(st.at_ms))
                    })
                    .unwrap_or_else(|| "no drill or restore test measured one".into()),
            });
        }
        let worst = s.worst_recovery_point();
        let rp_target = o.recovery_point.0.as_secs_f64();
        rows.push(Row {
            metric: "Recovery Point",
            target: format!("< {}", mins(rp_target)),
            actual: worst
                .as_ref()
                .map(|(_, v)| mins(*v))
                .unwrap_or_else(|| "-".into()),
            met: worst.as_ref().map(|(n, v)| {
                *v < s
                    .sources
                    .get(n)
                    .map(|x| x.recovery_point_target_s)
                    .unwrap_or(rp_target)
            }),
            basis: worst
                .map(|(n, _)| format!("now − newest verified backup, worst source: {n}"))
                .unwrap_or_else(|| "no verified backup of a scheduled source".into()),
        });
        let r = ratio(s.tests_succeeded, s.tests_due);
        rows.push(Row {
            metric: "Test Completion Rate",
            target: format!("{}%", o.test_completion_rate),
            actual: r.map(pct).unwrap_or_else(|| "-".into()),
            met: r.map(|r| r * 100.0 >= o.test_completion_rate),
            basis: format!(
                "{} of {} scheduled tests (verify, restore test, drill) succeeded; missed ones count",
                s.tests_succeeded, s.tests_due
            ),
        });
        let series = recovery_point_series(&s, 120);
        let h = s.history.clone();
        DrReport {
            since: when(s.since_ms),
            until: when(s.now_ms),
            rows,
            backups: h.backups,
            verifications: h.verifications,
            recoveries: h.recoveries,
            jobs: h.jobs,
            recovery_point_series: series,
            snapshot: s,
        }
    }

    /// Exit status for scripts: 0 when every measured row meets its target.
    pub fn all_met(&self) -> bool {
        self.rows.iter().all(|r| r.met != Some(false))
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Disaster Recovery Metrics\n");
        let _ = writeln!(out, "{} to {}\n", self.since, self.until);
        let _ = writeln!(out, "| Metric | Target | Actual | Met | Basis |");
        let _ = writeln!(out, "|--------|--------|--------|-----|-------|");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**NO**",
                None => "-",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {met} | {} |",
                r.metric, r.target, r.actual, r.basis
            );
        }
        let _ = writeln!(out, "\n## Backups\n");
        let _ = writeln!(
            out,
            "| Finished | Source | Kind | Result | Size | Duration |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for b in self.backups.iter().rev().take(50) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {:.1} s |",
                when(b.finished_ms),
                b.source,
                b.kind,
                if b.ok {
                    "ok".to_string()
                } else {
                    format!("failed: {}", b.error)
                },
                b.bytes,
                b.seconds
            );
        }
        let _ = writeln!(out, "\n## Tests and jobs\n");
        let _ = writeln!(out, "| Due | Schedule | Job | Status | Detail |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for j in self.jobs.iter().rev().take(50) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                when(j.due_ms),
                j.schedule,
                j.job,
                j.status,
                j.detail.replace('|', "/")
            );
        }
        out
    }

    pub fn html(&self) -> String {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>drhost: Disaster Recovery Metrics</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse}}\
             td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}.no{{color:#b00;font-weight:bold}}\
             .yes{{color:#070}}svg{{background:#fafafa;border:1px solid #ddd}}</style></head><body>\
             <h1>Disaster Recovery Metrics</h1><p>{} to {}</p><table><tr><th>Metric</th><th>Target</th>\
             <th>Actual</th><th>Met</th><th>Basis</th></tr>",
            self.since, self.until
        );
        for r in &self.rows {
            let (class, met) = match r.met {
                Some(true) => ("yes", "yes"),
                Some(false) => ("no", "NO"),
                None => ("", "-"),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{met}</td><td>{}</td></tr>",
                r.metric,
                esc(&r.target),
                esc(&r.actual),
                esc(&r.basis)
            );
        }
        out.push_str("</table>");
        let target = self
            .snapshot
            .sources
            .values()
            .filter(|s| s.scheduled)
            .map(|s| s.recovery_point_target_s)
            .fold(f64::NAN, f64::min);
        out.push_str("<h2>Recovery point over time</h2>");
        out.push_str(&line_chart(
            &self.recovery_point_series,
            if target.is_nan() { None } else { Some(target) },
            "recovery point (min)",
            60.0,
        ));
        let sizes: Vec<(i64, f64)> = self
            .backups
            .iter()
            .filter(|b| b.ok)
            .map(|b| (b.finished_ms, b.bytes as f64 / 1_048_576.0))
            .collect();
        out.push_str("<h2>Backup sizes</h2>");
        out.push_str(&line_chart(&sizes, None, "size (MiB)", 1.0));
        let durations: Vec<(i64, f64)> = self
            .backups
            .iter()
            .filter(|b| b.ok)
            .map(|b| (b.finished_ms, b.seconds))
            .collect();
        out.push_str("<h2>Backup durations</h2>");
        out.push_str(&line_chart(&durations, None, "duration (s)", 1.0));
        out.push_str("<h2>Jobs</h2><table><tr><th>Due</th><th>Schedule</th><th>Job</th><th>Status</th><th>Detail</th></tr>");
        for j in self.jobs.iter().rev().take(200) {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                when(j.due_ms),
                esc(&j.schedule),
                j.job,
                j.status,
                esc(&j.detail)
            );
        }
        out.push_str("</table></body></html>\n");
        out
    }
}

/// Samples "now − newest verified recovery point" (worst scheduled source)
/// at `n` instants across the window.
fn recovery_point_series(s: &Snapshot, n: i64) -> Vec<(i64, f64)> {
    let watched: Vec<&String> = s
        .sources
        .iter()
        .filter(|(_, st)| st.scheduled)
        .map(|(k, _)| k)
        .collect();
    let mut ok: Vec<(i64, &str, i64)> = s
        .history
        .verifications
        .iter()
        .filter(|v| v.ok)
        .filter_map(|v| v.covers_ms.map(|c| (v.finished_ms, v.source.as_str(), c)))
        .collect();
    ok.sort();
    if ok.is_empty() || watched.is_empty() {
        return Vec::new();
    }
    let start = ok[0].0.max(s.since_ms);
    let step = ((s.now_ms - start) / n).max(1);
    let mut out = Vec::new();
    let mut t = start;
    while t <= s.now_ms {
        let worst = watched
            .iter()
            .filter_map(|src| {
                ok.iter()
                    .filter(|(f, v, _)| *f <= t && v == src)
                    .map(|(_, _, c)| *c)
                    .max()
                    .map(|c| (t - c) as f64 / 1000.0)
            })
            .fold(f64::NAN, f64::max);
        if !worst.is_nan() {
            out.push((t, worst));
        }
        t += step;
    }
    out
}

/// A small SVG line chart; `scale` divides the values for the axis label.
fn line_chart(points: &[(i64, f64)], target: Option<f64>, label: &str, scale: f64) -> String {
    if points.is_empty() {
        return "<p>No data in this window.</p>".into();
    }
    let (w, h, pad) = (800.0, 220.0, 40.0);
    let t0 = points.iter().map(|p| p.0).min().unwrap_or(0) as f64;
    let t1 = (points.iter().map(|p| p.0).max().unwrap_or(0) as f64).max(t0 + 1.0);
    let top = points
        .iter()
        .map(|p| p.1)
        .chain(target)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: i64| pad + (t as f64 - t0) / (t1 - t0) * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / top * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <text x=\"4\" y=\"14\" font-size=\"12\">{label}, max {:.1}</text>",
        top / 1.1 / scale
    );
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"#2563eb\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    for (t, v) in points {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"#2563eb\"/>",
            x(*t),
            y(*v)
        );
    }
    if let Some(tg) = target {
        let _ = write!(
            svg,
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#b00\" stroke-dasharray=\"6 4\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" fill=\"#b00\">target {:.1}</text>",
            w - pad,
            y(tg),
            y(tg),
            w - pad - 90.0,
            y(tg) - 4.0,
            tg / scale
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text></svg>",
        h - 8.0,
        when(t0 as i64),
        w - pad - 130.0,
        h - 8.0,
        when(t1 as i64)
    );
    svg
}
