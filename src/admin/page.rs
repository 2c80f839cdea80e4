//! The status page: one server-rendered HTML page that refreshes itself,
//! with nothing fetched from elsewhere (no scripts, no fonts, no styles
//! from outside), so it works on an isolated admin network.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Admin, Probe};
use crate::metrics::metrics;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}\
th{background:#f0f0f0}.down{color:#b00;font-weight:bold}.up{color:#070}\
.state-promoted,.state-committed{background:#e6f4e6}.state-promoting{background:#fff4d6}";

/// Escapes text for HTML element content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the epoch, UTC, as `HH:MM:SS` of its day (the page shows
/// recent events; the day is in the log).
fn clock(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn render(admin: &Admin, probes: &[Probe]) -> String {
    let mut html = String::new();
    // Writing to a String cannot fail.
    let _ = write_page(&mut html, admin, probes);
    html
}

fn write_page(h: &mut String, admin: &Admin, probes: &[Probe]) -> std::fmt::Result {
    write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>klink status</title><style>{STYLE}</style></head><body>\
         <h1>klink</h1><p>As of {} (reloads every {REFRESH_SECS} s).</p>",
        clock(SystemTime::now())
    )?;
    let brokers = (admin.brokers)();
    h.push_str("<h2>Clusters</h2><table id=\"clusters\"><tr><th>cluster</th><th>reachable</th><th>virtual brokers (id: port &rarr; upstream node)</th></tr>");
    for probe in probes {
        let reachable = match &probe.failure {
            None => "<span class=\"up\">yes</span>".to_string(),
            Some(why) => format!("<span class=\"down\">no: {}</span>", esc(why)),
        };
        let listed: Vec<String> = brokers
            .iter()
            .filter(|b| b.cluster == probe.cluster)
            .map(|b| format!("{}: {} &rarr; {}", b.id, b.port, b.upstream_id))
            .collect();
        write!(
            h,
            "<tr><td>{}</td><td>{reachable}</td><td>{}</td></tr>",
            esc(&probe.cluster),
            listed.join(", ")
        )?;
    }
    h.push_str("</table>");

    let status = crate::control::status(&admin.routes.snapshot(), &admin.mirrors);
    h.push_str("<h2>Topics</h2><table id=\"topics\"><tr><th>topic</th><th>link</th><th>state</th><th>writes</th><th>reads</th><th>mirror lag</th><th>offsets</th><th>warnings</th></tr>");
    for t in &status.topics {
        write!(
            h,
            "<tr class=\"state-{state}\" data-topic=\"{topic}\"><td>{topic}</td><td>{link}</td>\
             <td class=\"state\">{state}</td><td class=\"writes\">{writes}</td><td class=\"reads\">{reads}</td>\
             <td>{lag}</td><td>{offsets}</td><td>{warnings}</td></tr>",
            topic = esc(&t.topic),
            link = esc(t.link.as_deref().unwrap_or("")),
            state = esc(&t.state),
            writes = esc(&t.writes),
            reads = esc(&t.reads),
            lag = t
                .lag
                .map_or_else(|| "&ndash;".to_string(), |l| l.to_string()),
            offsets = esc(t.offsets.as_deref().unwrap_or("")),
            warnings = esc(&t.warnings.join("; ")),
        )?;
    }
    h.push_str("</table>");

    h.push_str("<h2>Groups</h2><table id=\"groups\"><tr><th>group</th><th>link</th><th>coordinated by</th></tr>");
    for g in &status.groups {
        write!(
            h,
            "<tr data-group=\"{group}\"><td>{group}</td><td>{link}</td><td>{route}</td></tr>",
            group = esc(&g.group),
            link = esc(g.link.as_deref().unwrap_or("")),
            route = esc(&g.route),
        )?;
    }
    h.push_str("</table>");

    h.push_str("<h2>Promotions and rollbacks</h2><table id=\"cutovers\"><tr><th>when</th><th>command</th><th>topics</th><th>result</th><th>writes held</th><th>detail</th></tr>");
    for c in metrics().recent_cutovers().iter().rev() {
        write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} ms</td><td>{}</td></tr>",
            clock(c.at),
            c.command,
            esc(&c.topics.join(", ")),
            if c.ok { "done" } else { "failed" },
            c.fence_ms,
            esc(&c.detail),
        )?;
    }
    h.push_str("</table>");

    h.push_str("<h2>Recent changes</h2><table id=\"changes\"><tr><th>when</th><th>by (uid, pid)</th><th>command</th><th>outcome</th></tr>");
    for entry in admin.audit.recent().iter().rev() {
        write!(
            h,
            "<tr><td>{}</td><td>{}, {}</td><td><code>{}</code></td><td>{}</td></tr>",
            clock(entry.at),
            entry.uid.map_or_else(|| "?".into(), |u| u.to_string()),
            entry.pid.map_or_else(|| "?".into(), |p| p.to_string()),
            esc(&entry.command),
            esc(&entry.outcome),
        )?;
    }
    h.push_str("</table></body></html>\n");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_clock_reads_utc() {
        assert_eq!(esc("<b a=\"1\">&'"), "&lt;b a=&quot;1&quot;&gt;&amp;&#39;");
        let at = UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 3_723);
        assert_eq!(clock(at), "01:02:03 UTC");
    }
}
