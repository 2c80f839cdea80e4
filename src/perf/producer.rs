//! `klink perf producer`: kafka-producer-perf-test on klink's client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::ProducerArgs;
use super::props::{self, Props};
use super::stats::{Stats, Summary, summary_line};
use crate::client::{Client, DeliveryFuture, Producer, ProducerMetrics, ProducerRecord};

const REPORTING_INTERVAL: Duration = Duration::from_secs(5);
/// Failed records printed in full; the rest are only counted.
const ERRORS_SHOWN: u64 = 10;

pub async fn run(args: ProducerArgs) -> Result<(), String> {
    if args.num_records == 0 {
        return Err("--num-records should be greater than zero".into());
    }
    if args.record_size == Some(0) {
        return Err("--record-size should be greater than zero".into());
    }
    if args.throughput == 0.0 {
        return Err("--throughput 0 would never send; use -1 for no limit".into());
    }
    if args.producer_props.is_empty() && args.producer_config.is_none() {
        return Err("Either --producer-props or --producer.config must be specified.".into());
    }
    let mut payloads = Payloads::new(&args)?;
    let props: Props = props::load(args.producer_config.as_deref(), &args.producer_props)?;
    let (client_config, producer_config, warnings) = props::producer_config(&props)?;
    for w in warnings {
        eprintln!("WARN {w}");
    }
    let client = Client::connect(client_config)
        .await
        .map_err(|e| e.to_string())?;
    // Metadata before the clock starts, so the first record's latency is the
    // produce path and not the topic lookup.
    client.topic(&args.topic).await.map_err(|e| e.to_string())?;
    let client_id = client.config().client_id.clone();
    let producer = Producer::new(client, producer_config);
    let topic: Arc<str> = Arc::from(args.topic.as_str());

    let start = Instant::now();
    let (tx, rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect(
        rx,
        Stats::new(args.num_records, start, REPORTING_INTERVAL),
    ));
    let throttle = Throttle {
        per_sec: args.throughput,
        start,
    };
    for i in 0..args.num_records {
        let value = payloads.next(i);
        let bytes = value.len();
        let sent_at = Instant::now();
        let delivery = producer
            .send(ProducerRecord::new(topic.clone(), value))
            .await
            .map_err(|e| format!("send failed: {e}"))?;
        if tx.send((sent_at, bytes, delivery)).is_err() {
            break; // the collector ended: nothing left to measure
        }
        throttle.wait(i + 1).await;
    }
    drop(tx);
    producer.flush().await;
    let metrics = producer.metrics();
    producer.close().await;
    let (mut stats, failed) = collector
        .await
        .map_err(|e| format!("the statistics task failed: {e}"))?;
    let summary = stats.summary(Instant::now());
    println!("{}", summary_line(&summary));
    if args.print_metrics {
        super::print_metrics(&metrics_table(&client_id, &metrics, &summary));
    }
    if failed > 0 {
        return Err(format!("{failed} of {} records failed", args.num_records));
    }
    Ok(())
}

type Sent = (Instant, usize, DeliveryFuture);

/// Awaits every record's ack as it comes; Java measures in the send
/// callback, this measures when the ack's future completes.
async fn collect(mut rx: mpsc::UnboundedReceiver<Sent>, mut stats: Stats) -> (Stats, u64) {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    let mut failed = 0u64;
    loop {
        tokio::select! {
            biased;
            Some((sent_at, bytes, result)) = pending.next(), if !pending.is_empty() => {
                let now = Instant::now();
                match result {
                    Ok(_) => {
                        if let Some(line) = stats.record(now.duration_since(sent_at), bytes, now) {
                            println!("{line}");
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        if failed <= ERRORS_SHOWN {
                            eprintln!("klink perf: record failed: {e}");
                        }
                    }
                }
            }
            next = rx.recv(), if open => match next {
                Some((sent_at, bytes, delivery)) => {
                    pending.push(delivery.map(move |r| (sent_at, bytes, r)));
                }
                None => open = false,
            },
            else => break,
        }
    }
    (stats, failed)
}

/// Paces sends to `per_sec` on average (like Java's ThroughputThrottler,
/// which sleeps once it is ahead of schedule).
struct Throttle {
    per_sec: f64,
    start: Instant,
}

impl Throttle {
    async fn wait(&self, sent: u64) {
        if self.per_sec <= 0.0 {
            return;
        }
        let due = self.start + Duration::from_secs_f64(sent as f64 / self.per_sec);
        // Sleeping for less than a timer tick only adds jitter.
        if due > Instant::now() + Duration::from_millis(2) {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Record values: random uppercase letters as the Java tool sends, lines of
/// a payload file, or the record's number.
enum Payloads {
    /// Slices of one random buffer: no per-record generation cost, and
    /// neighbouring records differ so compression sees realistic data.
    Random {
        pool: Bytes,
        size: usize,
    },
    File {
        payloads: Vec<Bytes>,
        rng: XorShift,
    },
    Monotonic,
}

impl Payloads {
    fn new(args: &ProducerArgs) -> Result<Payloads, String> {
        if let Some(size) = args.record_size {
            let len = (1 << 20).max(size * 64) + size;
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
            let pool: Vec<u8> = (0..len).map(|_| b'A' + (rng.next() % 26) as u8).collect();
            return Ok(Payloads::Random {
                pool: Bytes::from(pool),
                size,
            });
        }
        if let Some(path) = &args.payload_file {
            let text =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let delimiter = match args.payload_delimiter.as_str() {
                "\\n" => "\n",
                other => other,
            };
            let payloads = split(&text, delimiter.as_bytes());
            if payloads.is_empty() {
                return Err("File does not exist or empty file provided.".into());
            }
            let shown = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            println!("Reading payloads from: {}", shown.display());
            println!("Number of messages read: {}", payloads.len());
            return Ok(Payloads::File {
                payloads,
                rng: XorShift(0x2545_f491_4f6c_dd1d),
            });
        }
        Ok(Payloads::Monotonic)
    }

    fn next(&mut self, i: u64) -> Bytes {
        match self {
            Payloads::Random { pool, size } => {
                let room = (pool.len() - *size + 1) as u64;
                let at = (i.wrapping_mul(*size as u64 + 13) % room) as usize;
                pool.slice(at..at + *size)
            }
            Payloads::File { payloads, rng } => {
                payloads[(rng.next() % payloads.len() as u64) as usize].clone()
            }
            Payloads::Monotonic => Bytes::from(i.to_string()),
        }
    }
}

/// Splits like Java's `Scanner.useDelimiter` for a literal delimiter:
/// empty pieces are dropped.
fn split(text: &[u8], delimiter: &[u8]) -> Vec<Bytes> {
    let text = Bytes::copy_from_slice(text);
    if delimiter.is_empty() {
        return vec![text];
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + delimiter.len() <= text.len() {
        if &text[i..i + delimiter.len()] == delimiter {
            if i > start {
                pieces.push(text.slice(start..i));
            }
            i += delimiter.len();
            start = i;
        } else {
            i += 1;
        }
    }
    if start < text.len() {
        pieces.push(text.slice(start..));
    }
    pieces
}

/// A small fast generator; the payloads need variety, not secrecy.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn metrics_table(client_id: &str, m: &ProducerMetrics, s: &Summary) -> Vec<(String, f64)> {
    let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let tag = format!("{{client-id={client_id}}}");
    let mut rows = vec![
        ("batch-size-avg", per(m.batch_bytes, m.batches)),
        ("record-send-total", m.records as f64),
        ("records-per-request-avg", per(m.records, m.requests)),
        ("request-total", m.requests as f64),
        (
            "request-latency-avg",
            per(m.request_latency_total_us, m.requests) / 1000.0,
        ),
        ("record-retry-total", m.retries as f64),
        ("batch-error-total", m.failed_batches as f64),
    ]
    .into_iter()
    .map(|(name, v)| (format!("producer-metrics:{name}:{tag}"), v))
    .collect::<Vec<_>>();
    // Finer than the summary line's whole milliseconds.
    let names = ["p50", "p95", "p99", "p99.9"];
    for (name, us) in names.iter().zip(s.percentiles_us) {
        rows.push((
            format!("klink-perf:record-latency-{name}-ms:{tag}"),
            f64::from(us) / 1000.0,
        ));
    }
    rows.push((format!("klink-perf:record-latency-avg-ms:{tag}"), s.avg_ms));
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_files_split_like_javas_scanner() {
        let pieces = split(b"a\nbb\n\nccc\n", b"\n");
        assert_eq!(pieces, [&b"a"[..], b"bb", b"ccc"].map(Bytes::from_static));
        assert_eq!(
            split(b"x||y", b"||"),
            [&b"x"[..], b"y"].map(Bytes::from_static)
        );
        assert!(split(b"\n\n", b"\n").is_empty());
    }

    #[test]
    fn random_payloads_have_the_size_and_vary() {
        let mut p = Payloads::Random {
            pool: Bytes::from(vec![b'A'; 10]),
            size: 4,
        };
        for i in 0..100 {
            assert_eq!(p.next(i).len(), 4);
        }
        let args = ProducerArgs {
            topic: "t".into(),
            num_records: 1,
            record_size: Some(100),
            payload_file: None,
            payload_delimiter: "\\n".into(),
            payload_monotonic: false,
            throughput: -1.0,
            producer_props: vec![],
            producer_config: None,
            print_metrics: false,
        };
        let mut p = Payloads::new(&args).expect("payloads");
        let (a, b) = (p.next(0), p.next(1));
        assert_ne!(a, b);
        assert!(a.iter().all(u8::is_ascii_uppercase));
        assert_eq!(Payloads::Monotonic.next(42), Bytes::from_static(b"42"));
    }
}
