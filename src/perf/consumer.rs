//! `klink perf consumer`: kafka-consumer-perf-test on klink's fetcher.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::ConsumerArgs;
use super::props;
use crate::client::{Client, Fetcher};

const MIB: f64 = 1024.0 * 1024.0;

const HEADER_TAIL: &str = ", rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec";

pub async fn run(args: ConsumerArgs) -> Result<(), String> {
    if args.reporting_interval == 0 {
        return Err("Reporting interval must be greater than 0.".into());
    }
    let mut props = props::load(args.consumer_config.as_deref(), &[])?;
    if let Some(servers) = &args.bootstrap_server {
        props.insert("bootstrap.servers".into(), servers.clone());
    }
    props.insert(
        "max.partition.fetch.bytes".into(),
        args.fetch_size.to_string(),
    );
    let (client_config, fetch_config, warnings) = props::consumer_config(&props)?;
    for w in warnings {
        eprintln!("WARN {w}");
    }
    if !args.hide_header {
        println!("{}", header(args.show_detailed_stats));
    }
    let start_ms = epoch_ms();
    let start = Instant::now();
    let client = Client::connect(client_config)
        .await
        .map_err(|e| e.to_string())?;
    let mut fetcher = Fetcher::assign_all(client, &args.topic, fetch_config)
        .await
        .map_err(|e| e.to_string())?;
    // What Java reports as the group join: here, finding the partitions
    // and their earliest offsets.
    let assign_ms = start.elapsed().as_millis() as u64;
    let timeout = Duration::from_millis(args.timeout);
    let interval = Duration::from_millis(args.reporting_interval);
    let mut totals = Progress::default();
    let mut last = Progress::default();
    let mut last_report = Instant::now();
    let mut last_consumed = Instant::now();
    let mut assign_in_round = assign_ms;
    while totals.messages < args.messages && last_consumed.elapsed() <= timeout {
        let left = timeout.saturating_sub(last_consumed.elapsed());
        let fetched = match tokio::time::timeout(left, fetcher.fetch()).await {
            Ok(result) => result.map_err(|e| e.to_string())?,
            Err(_) => break,
        };
        let now = Instant::now();
        for f in &fetched {
            totals.messages += f.record_count;
            totals.bytes += f.records.len() as u64;
        }
        if fetched.iter().any(|f| f.record_count > 0) {
            last_consumed = now;
        }
        if args.show_detailed_stats && now.duration_since(last_report) >= interval {
            let elapsed = now.duration_since(last_report);
            println!(
                "{}",
                progress_line(epoch_ms(), &totals, &last, elapsed, assign_in_round)
            );
            assign_in_round = 0;
            last_report = now;
            last = totals;
        }
    }
    let end_ms = epoch_ms();
    if totals.messages < args.messages {
        println!(
            "WARNING: Exiting before consuming the expected number of messages: timeout ({} ms) exceeded. \
             You can use the --timeout option to increase the timeout.",
            args.timeout
        );
    }
    let elapsed = Duration::from_millis(end_ms.saturating_sub(start_ms));
    if !args.show_detailed_stats {
        println!(
            "{}",
            final_line(start_ms, end_ms, &totals, elapsed, assign_ms)
        );
    }
    if args.print_metrics {
        let positions: i64 = fetcher.positions().values().sum();
        super::print_metrics(&[
            (
                "klink-perf:records-consumed-total".to_string(),
                totals.messages as f64,
            ),
            (
                "klink-perf:bytes-consumed-total".to_string(),
                totals.bytes as f64,
            ),
            ("klink-perf:position-sum".to_string(), positions as f64),
        ]);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    messages: u64,
    bytes: u64,
}

fn header(detailed: bool) -> String {
    if detailed {
        format!(
            "time, threadId, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec{HEADER_TAIL}"
        )
    } else {
        format!(
            "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec{HEADER_TAIL}"
        )
    }
}

/// The Java tool's final CSV line.
fn final_line(
    start_ms: u64,
    end_ms: u64,
    totals: &Progress,
    elapsed: Duration,
    assign_ms: u64,
) -> String {
    let secs = elapsed.as_secs_f64();
    let mb = totals.bytes as f64 / MIB;
    let fetch_ms = (elapsed.as_millis() as u64).saturating_sub(assign_ms);
    let fetch_secs = fetch_ms as f64 / 1000.0;
    format!(
        "{}, {}, {:.4}, {:.4}, {}, {:.4}, {}, {}, {:.4}, {:.4}",
        date(start_ms),
        date(end_ms),
        mb,
        mb / secs,
        totals.messages,
        totals.messages as f64 / secs,
        assign_ms,
        fetch_ms,
        mb / fetch_secs,
        totals.messages as f64 / fetch_secs,
    )
}

/// One `--show-detailed-stats` line (thread id always 0, as in Java).
fn progress_line(
    now_ms: u64,
    totals: &Progress,
    last: &Progress,
    elapsed: Duration,
    assign_ms: u64,
) -> String {
    let elapsed_ms = elapsed.as_millis() as f64;
    let interval_mb = (totals.bytes - last.bytes) as f64 / MIB;
    let interval_msgs = (totals.messages - last.messages) as f64;
    let fetch_ms = (elapsed.as_millis() as u64).saturating_sub(assign_ms);
    let per_fetch_sec = |x: f64| {
        if fetch_ms == 0 {
            0.0
        } else {
            1000.0 * x / fetch_ms as f64
        }
    };
    format!(
        "{}, 0, {:.4}, {:.4}, {}, {:.4}, {}, {}, {:.4}, {:.4}",
        date(now_ms),
        totals.bytes as f64 / MIB,
        1000.0 * interval_mb / elapsed_ms,
        totals.messages,
        1000.0 * interval_msgs / elapsed_ms,
        assign_ms,
        fetch_ms,
        per_fetch_sec(interval_mb),
        per_fetch_sec(interval_msgs),
    )
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `yyyy-MM-dd HH:mm:ss:SSS` in UTC (the Java tool's default pattern).
fn date(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}:{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_in_the_java_pattern() {
        assert_eq!(date(0), "1970-01-01 00:00:00:000");
        assert_eq!(date(951_782_400_123), "2000-02-29 00:00:00:123");
        assert_eq!(date(1_700_000_000_000), "2023-11-14 22:13:20:000");
    }

    #[test]
    fn lines_are_formatted_like_the_java_tool() {
        assert_eq!(
            header(false),
            "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
             rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec"
        );
        let totals = Progress {
            messages: 50_000,
            bytes: 5 * 1024 * 1024,
        };
        assert_eq!(
            final_line(0, 2000, &totals, Duration::from_millis(2000), 500),
            "1970-01-01 00:00:00:000, 1970-01-01 00:00:02:000, 5.0000, 2.5000, 50000, 25000.0000, \
             500, 1500, 3.3333, 33333.3333"
        );
        let last = Progress {
            messages: 40_000,
            bytes: 4 * 1024 * 1024,
        };
        assert_eq!(
            progress_line(1000, &totals, &last, Duration::from_millis(1000), 0),
            "1970-01-01 00:00:01:000, 0, 5.0000, 1.0000, 50000, 10000.0000, 0, 1000, 1.0000, 10000.0000"
        );
    }
}
