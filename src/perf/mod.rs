//! `klink perf`: load generators on klink's own client that take the flags
//! of Kafka's `kafka-producer-perf-test` and `kafka-consumer-perf-test` and
//! print their lines, so operators compare klink runs with what they
//! already run.
//!
//! Differences from the Java tools, on purpose:
//! - the consumer joins no group: it assigns every partition of the topic
//!   and starts at the earliest offset (`--group` is accepted and unused);
//! - the consumer counts record batch bytes as fetched, not key plus value
//!   bytes, because it reads batch headers only;
//! - `fetch.max.wait.ms` defaults to 10 ms (Java: 500), see
//!   [`FetchConfig`](crate::client::FetchConfig);
//! - the consumer's times are UTC.

mod consumer;
mod producer;
mod props;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};

pub use props::{Props, load as load_props, parse_properties};
pub use stats::{Stats, Summary, summary_line};

#[derive(Debug, Subcommand)]
pub enum PerfCommand {
    /// Produce like kafka-producer-perf-test and print its lines.
    Producer(ProducerArgs),
    /// Consume like kafka-consumer-perf-test and print its CSV lines.
    Consumer(ConsumerArgs),
}

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("payload")
        .required(true)
        .args(["record_size", "payload_file", "payload_monotonic"])
))]
pub struct ProducerArgs {
    /// Produce messages to this topic.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// Number of messages to produce.
    #[arg(long = "num-records", value_name = "NUM-RECORDS")]
    pub num_records: u64,
    /// Message size in bytes.
    #[arg(long = "record-size", value_name = "RECORD-SIZE")]
    pub record_size: Option<usize>,
    /// File to read payloads from; one is picked at random per message.
    #[arg(long = "payload-file", value_name = "PAYLOAD-FILE")]
    pub payload_file: Option<PathBuf>,
    /// Payload separator in --payload-file.
    #[arg(
        long = "payload-delimiter",
        default_value = "\\n",
        value_name = "PAYLOAD-DELIMITER"
    )]
    pub payload_delimiter: String,
    /// Payloads are the record's number, counting up.
    #[arg(long = "payload-monotonic")]
    pub payload_monotonic: bool,
    /// Cap on messages per second; -1 for none.
    #[arg(long, allow_negative_numbers = true, default_value_t = -1.0, value_name = "THROUGHPUT")]
    pub throughput: f64,
    /// Producer properties: bootstrap.servers, acks, linger.ms, batch.size,
    /// compression.type, max.in.flight.requests.per.connection, client.id, ...
    #[arg(long = "producer-props", num_args = 1.., value_name = "PROP-NAME=PROP-VALUE")]
    pub producer_props: Vec<String>,
    /// Producer properties file (--producer-props win over it).
    #[arg(long = "producer.config", value_name = "CONFIG-FILE")]
    pub producer_config: Option<PathBuf>,
    /// Print producer metrics at the end.
    #[arg(long = "print-metrics")]
    pub print_metrics: bool,
}

#[derive(Debug, Args)]
pub struct ConsumerArgs {
    /// The topic to consume from.
    #[arg(long, value_name = "TOPIC")]
    pub topic: String,
    /// The number of messages to consume.
    #[arg(long, value_name = "COUNT")]
    pub messages: u64,
    /// The server(s) to connect to (else bootstrap.servers from --consumer.config).
    #[arg(long = "bootstrap-server", value_name = "SERVERS")]
    pub bootstrap_server: Option<String>,
    /// Bytes to fetch per partition in one request (max.partition.fetch.bytes).
    #[arg(long = "fetch-size", default_value_t = 1024 * 1024, value_name = "SIZE")]
    pub fetch_size: i32,
    /// Milliseconds without a record before giving up.
    #[arg(long, default_value_t = 10_000, value_name = "MILLISECONDS")]
    pub timeout: u64,
    /// Print stats every --reporting-interval instead of one final line.
    #[arg(long = "show-detailed-stats")]
    pub show_detailed_stats: bool,
    /// Milliseconds between detailed stats lines.
    #[arg(
        long = "reporting-interval",
        default_value_t = 5000,
        value_name = "INTERVAL_MS"
    )]
    pub reporting_interval: u64,
    /// Consumer properties file.
    #[arg(long = "consumer.config", value_name = "CONFIG-FILE")]
    pub consumer_config: Option<PathBuf>,
    /// Skip the header line.
    #[arg(long = "hide-header")]
    pub hide_header: bool,
    /// Accepted for compatibility; no group is joined.
    #[arg(long, value_name = "GID")]
    pub group: Option<String>,
    /// Print fetch metrics at the end.
    #[arg(long = "print-metrics")]
    pub print_metrics: bool,
}

/// Runs one perf command to completion on its own runtime.
pub fn run(command: PerfCommand) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("klink perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match command {
            PerfCommand::Producer(args) => producer::run(args).await,
            PerfCommand::Consumer(args) => consumer::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("klink perf: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints metrics as the Java tools' `ToolsUtils.printMetrics` lays them out.
fn print_metrics(metrics: &[(String, f64)]) {
    let width = metrics.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    println!("\n{:<width$}   Value", "Metric Name");
    for (name, value) in metrics {
        println!("{name:<width$} : {value:.3}");
    }
}
