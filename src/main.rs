//! The `klink` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use klink::config::Config;
use klink::control::Reply;

#[derive(Parser)]
#[command(
    name = "klink",
    version,
    about = "Kafka wire-protocol proxy for moving workloads between clusters without restarting clients"
)]
struct Cli {
    /// Log lines as text for people, or as JSON objects (one per line)
    /// for log collectors. The level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in front of the configured clusters.
    Proxy {
        /// Path to klink.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Talk to a running klink through its control socket.
    Ctl {
        /// Path to klink.toml (names the control socket).
        #[arg(long, short)]
        config: PathBuf,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// The users clients log in to klink as (`[proxy] sasl.users_file`).
    User {
        /// Path to klink.toml (names the users file).
        #[arg(
            long,
            short,
            conflicts_with = "users_file",
            required_unless_present = "users_file"
        )]
        config: Option<PathBuf>,
        /// The users file itself.
        #[arg(long)]
        users_file: Option<PathBuf>,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Load generators with kafka-producer-perf-test's and
    /// kafka-consumer-perf-test's flags and output.
    Perf {
        #[command(subcommand)]
        command: klink::perf::PerfCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user, or give an existing one a new password. The password
    /// is read from standard input (one line) or from --password-env.
    Add {
        name: String,
        /// SCRAM-SHA-256 and/or SCRAM-SHA-512 (default both); PLAIN logins
        /// are checked against these too.
        #[arg(long = "mechanism")]
        mechanisms: Vec<String>,
        #[arg(long, default_value_t = 4096)]
        iterations: u32,
        /// The environment variable holding the password.
        #[arg(long)]
        password_env: Option<String>,
    },
    /// Remove a user; a running klink refuses its next logins.
    Remove { name: String },
    /// Each user and its mechanisms.
    List,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every linked topic and group with its routes.
    Status {
        /// Print the JSON the control socket answered.
        #[arg(long)]
        json: bool,
    },
    /// Change where a topic's writes and/or reads go.
    Route {
        topic: String,
        #[arg(long)]
        writes: Option<String>,
        #[arg(long)]
        reads: Option<String>,
    },
    /// Change which cluster coordinates a consumer group.
    RouteGroup {
        group: String,
        #[arg(long)]
        to: String,
    },
    /// A mirrored topic per partition: source end, mirrored up to, target
    /// end, lag, records/s, last error.
    Mirror {
        topic: String,
        #[arg(long)]
        json: bool,
    },
    /// A partition's offset map: source ranges and the target ranges they
    /// became, and whether it is the identity.
    Offsets {
        topic: String,
        partition: i32,
        #[arg(long)]
        json: bool,
    },
    /// Move a mirroring topic's reads and writes to its link's target,
    /// holding new writes while the mirror drains (exit 1 if aborted).
    Promote {
        topic: Option<String>,
        /// Every topic of this link, under one fence.
        #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
        link: Option<String>,
        /// A consumer group outside the link that moves with the topics
        /// (and belongs to the link from then on); repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Move a promoted topic's reads and writes back to its link's source,
    /// holding new writes while the reverse mirror drains (exit 1 if
    /// aborted).
    Rollback {
        topic: Option<String>,
        /// Every topic of this link, under one fence.
        #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
        link: Option<String>,
        /// A consumer group outside the link that moves with the topics
        /// (and belongs to the link from then on); repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// End a promoted topic's migration (`promoted -> committed`): the
    /// reverse mirror stops and there is no way back.
    Commit {
        topic: Option<String>,
        /// Every topic of this link.
        #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
        link: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    match cli.command {
        Command::Proxy { config } => proxy(config),
        Command::Ctl { config, command } => ctl(config, command),
        Command::Perf { command } => klink::perf::run(command),
        Command::User {
            config,
            users_file,
            command,
        } => user(config, users_file, command),
    }
}

fn user(config: Option<PathBuf>, users_file: Option<PathBuf>, command: UserCommand) -> ExitCode {
    use klink::sasl::scram::ScramHash;
    use klink::sasl::users;
    let path = match (users_file, config) {
        (Some(path), _) => path,
        (None, Some(config)) => match Config::load(&config) {
            Ok(loaded) => match loaded.proxy.sasl {
                Some(sasl) => sasl.users_file,
                None => {
                    eprintln!("klink user: {} has no [proxy] sasl", config.display());
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("klink: config error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => return ExitCode::from(2),
    };
    let done = match command {
        UserCommand::Add {
            name,
            mechanisms,
            iterations,
            password_env,
        } => {
            let hashes: Result<Vec<ScramHash>, String> = if mechanisms.is_empty() {
                Ok(vec![ScramHash::Sha256, ScramHash::Sha512])
            } else {
                mechanisms
                    .iter()
                    .map(|m| match m.as_str() {
                        "SCRAM-SHA-256" => Ok(ScramHash::Sha256),
                        "SCRAM-SHA-512" => Ok(ScramHash::Sha512),
                        other => Err(format!(
                            "--mechanism {other:?}: SCRAM-SHA-256 or SCRAM-SHA-512"
                        )),
                    })
                    .collect()
            };
            let password = match password_env {
                Some(var) => std::env::var(&var)
                    .map_err(|_| format!("the environment variable {var} is not set")),
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .map(|_| line.trim_end_matches(['\r', '\n']).to_string())
                        .map_err(|e| format!("reading the password from standard input: {e}"))
                }
            };
            hashes.and_then(|hashes| {
                users::add_user(&path, &name, &password?, &hashes, iterations)?;
                println!("user {name:?} in {}", path.display());
                Ok(())
            })
        }
        UserCommand::Remove { name } => users::remove_user(&path, &name).and_then(|removed| {
            if removed {
                println!("user {name:?} removed from {}", path.display());
                Ok(())
            } else {
                Err(format!("no user {name:?} in {}", path.display()))
            }
        }),
        UserCommand::List => users::list_users(&path).map(|all| {
            for (name, hashes) in all {
                let names: Vec<&str> = hashes.iter().map(|h| h.name()).collect();
                println!("{name}\t{}", names.join(","));
            }
        }),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("klink user: {e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(path: PathBuf, command: CtlCommand) -> ExitCode {
    use klink::control::{self, Command as Request};
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("klink: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let (request, json) = match command {
        CtlCommand::Status { json } => (Request::Status {}, json),
        CtlCommand::Route {
            topic,
            writes,
            reads,
        } => (
            Request::Route {
                topic,
                writes,
                reads,
            },
            false,
        ),
        CtlCommand::RouteGroup { group, to } => (Request::RouteGroup { group, to }, false),
        CtlCommand::Mirror { topic, json } => (Request::Mirror { topic }, json),
        CtlCommand::Offsets {
            topic,
            partition,
            json,
        } => (Request::Offsets { topic, partition }, json),
        CtlCommand::Promote {
            topic,
            link,
            groups,
            json,
        } => (
            Request::Promote {
                topic,
                link,
                groups,
            },
            json,
        ),
        CtlCommand::Rollback {
            topic,
            link,
            groups,
            json,
        } => (
            Request::Rollback {
                topic,
                link,
                groups,
            },
            json,
        ),
        CtlCommand::Commit { topic, link } => (Request::Commit { topic, link }, false),
    };
    let token = match config.proxy.control_token() {
        Ok(token) => token,
        Err(e) => {
            eprintln!("klink ctl: the control socket wants a token: {e}");
            return ExitCode::from(2);
        }
    };
    let reply = control::client::send(
        &config.proxy.control_socket,
        &request,
        token.as_ref().map(|t| t.expose()),
    );
    if let Some(line) = reply.as_ref().ok().and_then(control::client::warning_line) {
        eprintln!("{line}");
    }
    match reply {
        Ok(reply) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&reply).unwrap_or_default()
            );
            if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Reply {
            ok: true,
            mirror: Some(partitions),
            ..
        }) => {
            print!("{}", control::client::mirror_table(&partitions));
            ExitCode::SUCCESS
        }
        Ok(Reply {
            ok: true,
            promotion: Some(promotion),
            ..
        }) => {
            print!("{}", control::client::promotion_text(&promotion));
            ExitCode::SUCCESS
        }
        Ok(Reply {
            ok: true,
            offsets: Some(offsets),
            ..
        }) => {
            print!("{}", control::client::offsets_table(&offsets));
            ExitCode::SUCCESS
        }
        Ok(reply) => match (reply.ok, reply.status) {
            (true, Some(status)) => {
                print!("{}", control::client::table(&status));
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!(
                    "klink ctl: {}",
                    reply.error.unwrap_or_else(|| "failed".into())
                );
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("klink ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn proxy(path: PathBuf) -> ExitCode {
    let loaded = Config::load(&path).and_then(|mut config| {
        config.resolve_security(&path)?;
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("klink: config error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("klink: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match klink::proxy::run(config, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("klink: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop klink with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
