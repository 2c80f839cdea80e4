//! Real parts for protocol tests: tansu brokers and klink processes on free
//! loopback ports, and the client tools `scripts/deps.sh` installs.
//!
//! Nothing here skips: a missing tool is a loud failure naming the script
//! that installs it.
//!
//! Just over 600 lines: brokers (plain, persistent, with SCRAM users),
//! klink processes and the machine-sharing rule are what every test file
//! starts from, and read best in one place.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where `scripts/deps.sh` puts things.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("KLINK_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/klink"),
    }
}

fn tool(env: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found (set {env} or run scripts/deps.sh to install it)",
        path.display()
    );
    path
}

pub fn tansu_bin() -> PathBuf {
    tool(
        "KLINK_TANSU",
        cache_dir().join("tansu-0.6.0-dynostore-libsql/bin/tansu"),
    )
}

pub fn python_bin() -> PathBuf {
    tool("KLINK_PYTHON", cache_dir().join("venv/bin/python"))
}

pub fn node_path() -> PathBuf {
    tool("KLINK_NODE_PATH", cache_dir().join("node/node_modules"))
}

pub fn kcat_bin() -> PathBuf {
    tool("KLINK_KCAT", PathBuf::from("/usr/bin/kcat"))
}

pub fn socat_bin() -> PathBuf {
    tool("KLINK_SOCAT", PathBuf::from("/usr/bin/socat"))
}

pub fn chromium_bin() -> PathBuf {
    tool("KLINK_CHROMIUM", PathBuf::from("/usr/bin/chromium"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The start of `count` consecutive free ports, outside the ephemeral range
/// so the kernel does not hand them to an outgoing connection meanwhile.
pub fn free_port_range(count: u16) -> u16 {
    let seed = std::process::id() as u64
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut candidate = 20_000 + (seed % 10_000) as u16;
    for _ in 0..200 {
        let all_free =
            (candidate..candidate + count).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return candidate;
        }
        candidate = 20_000 + (candidate + count * 7 + 13 - 20_000) % 10_000;
    }
    panic!("no {count} consecutive free ports found");
}

pub fn wait_for_port(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on {addr} after {within:?}");
}

/// A child process killed when dropped, its output kept in a file.
pub struct Process {
    child: Option<Child>,
    pub log: PathBuf,
    pub name: String,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Process {
        let out = fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            child: Some(child),
            log,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not exit within {within:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tansu broker on a free loopback port: memory storage, or sqlite
/// storage that survives a restart.
pub struct Broker {
    pub addr: SocketAddr,
    pub process: Process,
    _dir: Arc<tempfile::TempDir>,
    /// How to start it again (same port, same storage).
    launch: Launch,
}

#[derive(Clone)]
struct Launch {
    storage: String,
    port: u16,
    advertised: u16,
    cluster_id: String,
    starts: u32,
    /// Whether clients must log in (SASL/SCRAM).
    authentication: bool,
}

/// Tests share the machine (2 cores in CI); a full-speed load test takes it
/// whole so that the timing of other tests (group rebalances, timeouts)
/// does not depend on it.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    static HOLDS_MACHINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// A test's share of the machine, taken with its first broker and let
    /// go when its thread ends (libtest runs each test on a thread of its
    /// own): one share per test, so a test starting a second broker never
    /// waits behind a whole-machine test that waits for it.
    static SHARING: std::cell::RefCell<Option<std::sync::RwLockReadGuard<'static, ()>>> =
        const { std::cell::RefCell::new(None) };
}

fn share_machine() {
    if HOLDS_MACHINE.with(|h| h.get()) {
        return;
    }
    SHARING.with(|sharing| {
        let mut sharing = sharing.borrow_mut();
        if sharing.is_none() {
            *sharing = Some(MACHINE.read().unwrap_or_else(|p| p.into_inner()));
        }
    });
}

/// Waits until no other test runs a broker, and keeps others from starting
/// one until the guard is dropped. Brokers this thread starts meanwhile do
/// not wait.
pub fn whole_machine() -> WholeMachine {
    let guard = MACHINE.write().unwrap_or_else(|p| p.into_inner());
    HOLDS_MACHINE.with(|h| h.set(true));
    WholeMachine { _guard: guard }
}

pub struct WholeMachine {
    _guard: std::sync::RwLockWriteGuard<'static, ()>,
}

impl Drop for WholeMachine {
    fn drop(&mut self) {
        HOLDS_MACHINE.with(|h| h.set(false));
    }
}

impl Broker {
    pub fn start(cluster_id: &str) -> Broker {
        Broker::start_on(free_port(), cluster_id)
    }

    /// A broker on a port chosen beforehand (a cluster that comes up late).
    pub fn start_on(port: u16, cluster_id: &str) -> Broker {
        Broker::start_advertising(port, port, cluster_id)
    }

    /// A broker that tells clients to reach it at `advertised` (a relay in
    /// front of it) while it listens on `port`.
    pub fn start_advertising(port: u16, advertised: u16, cluster_id: &str) -> Broker {
        Broker::launch(Launch {
            storage: "memory://tansu/".into(),
            port,
            advertised,
            cluster_id: cluster_id.into(),
            starts: 0,
            authentication: false,
        })
    }

    /// A broker keeping its data in a sqlite file, so that it survives
    /// [`Broker::restart`].
    pub fn start_persistent(cluster_id: &str) -> Broker {
        let port = free_port();
        Broker::launch(Launch {
            // Set once the directory exists.
            storage: String::new(),
            port,
            advertised: port,
            cluster_id: cluster_id.into(),
            starts: 0,
            authentication: false,
        })
    }

    /// A broker (sqlite storage) that wants a SCRAM login: `users` are
    /// (name, password, `scram256` or `scram512`), created while it runs
    /// without authentication, then it restarts with it. It tells clients
    /// to reach it at `advertised` (a TLS terminator in front of it) when
    /// given.
    pub fn start_scram(
        cluster_id: &str,
        users: &[(&str, &str, &str)],
        advertised: Option<u16>,
    ) -> Broker {
        let mut broker = Broker::start_persistent(cluster_id);
        let port = broker.launch.port;
        for (name, password, mechanism) in users {
            let mut command = Command::new(tansu_bin());
            command
                .args(["user", "create", name, password, "--mechanism", mechanism])
                .args(["--broker", &format!("tcp://127.0.0.1:{port}")]);
            let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
            assert!(
                status.success(),
                "tansu user create {name}: {stdout}{stderr}"
            );
        }
        broker.kill();
        broker.launch.authentication = true;
        broker.launch.advertised = advertised.unwrap_or(port);
        broker.restart();
        broker
    }

    fn launch(mut launch: Launch) -> Broker {
        share_machine();
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        if launch.storage.is_empty() {
            // Four slashes: sqlite:// and an absolute path.
            launch.storage = format!("sqlite:///{}", dir.path().join("tansu.db").display());
        }
        let process = Broker::spawn(&launch, dir.path());
        Broker {
            addr: ([127, 0, 0, 1], launch.port).into(),
            process,
            _dir: dir,
            launch,
        }
    }

    fn spawn(launch: &Launch, dir: &Path) -> Process {
        let url = format!("tcp://127.0.0.1:{}", launch.port);
        let advertised = format!("tcp://127.0.0.1:{}", launch.advertised);
        let mut command = Command::new(tansu_bin());
        command
            .current_dir(dir)
            .args(["broker", "--storage-engine", &launch.storage])
            .args([
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--cluster-id", &launch.cluster_id])
            .env("RUST_LOG", "warn");
        if launch.authentication {
            command.arg("--authentication");
        }
        let log = dir.join(format!("tansu-{}.log", launch.starts));
        let process = Process::spawn("tansu", command, log);
        wait_for_port(
            ([127, 0, 0, 1], launch.port).into(),
            Duration::from_secs(30),
        );
        process
    }

    /// Kills the broker (SIGKILL), and returns once its port is closed.
    pub fn kill(&mut self) {
        self.process.signal("KILL");
        self.process.wait_exit(Duration::from_secs(10));
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.launch.starts += 1;
        self.process = Broker::spawn(&self.launch, self._dir.path());
    }
}

/// A klink process started from the binary cargo built for these tests.
pub struct Klink {
    pub bootstrap: SocketAddr,
    pub broker_ports_start: u16,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub process: Process,
    dir: Arc<tempfile::TempDir>,
    /// Set for klink and `klink ctl` (passwords, the control token).
    pub env: Vec<(String, String)>,
}

pub struct KlinkOptions {
    pub max_frame_bytes: u32,
    pub extra_proxy: String,
    /// More clusters besides `source`, by name.
    pub clusters: Vec<(String, SocketAddr)>,
    /// Appended to the config as is (e.g. `[[links]]`).
    pub extra_config: String,
    /// More keys of `[clusters.source]` (its security), then, if it likes,
    /// whole cluster sections.
    pub source_extra: String,
    /// Environment for klink and `klink ctl`.
    pub env: Vec<(String, String)>,
}

impl Default for KlinkOptions {
    fn default() -> Self {
        KlinkOptions {
            max_frame_bytes: 104_857_600,
            extra_proxy: String::new(),
            clusters: Vec::new(),
            extra_config: String::new(),
            source_extra: String::new(),
            env: Vec::new(),
        }
    }
}

impl Klink {
    pub fn start(source: &Broker) -> Klink {
        Klink::start_with(source, KlinkOptions::default())
    }

    pub fn start_with(source: &Broker, options: KlinkOptions) -> Klink {
        let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
        let bootstrap: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let broker_ports_start = free_port_range(8);
        let state_dir = dir.path().join("state");
        let config = dir.path().join("klink.toml");
        fs::write(
            &config,
            format!(
                "[proxy]\nlisten = \"{bootstrap}\"\nadvertised_host = \"127.0.0.1\"\n\
                 broker_ports_start = {broker_ports_start}\nstate_dir = \"{}\"\n\
                 control_socket = \"{}/control.sock\"\n\
                 max_frame_bytes = {}\nshutdown_grace_ms = 5000\n{}\n\
                 [clusters.source]\nbootstrap = \"{}\"\n{}\n{}\n{}\n",
                state_dir.display(),
                state_dir.display(),
                options.max_frame_bytes,
                options.extra_proxy,
                source.addr,
                options.source_extra,
                options
                    .clusters
                    .iter()
                    .map(|(name, addr)| format!("[clusters.{name}]\nbootstrap = \"{addr}\"\n"))
                    .collect::<String>(),
                options.extra_config,
            ),
        )
        .expect("write config");
        let process = spawn_klink_with(&config, dir.path(), 0, &options.env);
        Klink {
            bootstrap,
            broker_ports_start,
            state_dir,
            config,
            process,
            dir,
            env: options.env,
        }
    }

    /// Stops klink with SIGTERM (asserting a clean exit) and starts it again
    /// on the same config and state.
    pub fn restart(&mut self) {
        self.process.signal("TERM");
        let status = self.process.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "klink exited with {status} on SIGTERM");
        self.process = spawn_klink_with(&self.config, self.dir.path(), 1, &self.env);
    }

    /// Kills klink with SIGKILL (no chance to tidy up) and starts it again
    /// on the same config and state.
    pub fn crash_and_restart(&mut self, generation: u32) {
        self.process.signal("KILL");
        let _ = self.process.wait_exit(Duration::from_secs(15));
        self.process = spawn_klink_with(&self.config, self.dir.path(), generation, &self.env);
    }

    /// Runs `klink ctl --config ... ARGS`.
    pub fn ctl(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
        command
            .args(["ctl", "--config"])
            .arg(&self.config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        run_bounded(command, Duration::from_secs(30))
    }

    /// Runs `klink ctl` and insists it succeeds.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (status, stdout, stderr) = self.ctl(args);
        assert!(
            status.success(),
            "klink ctl {args:?} failed: {stderr}{stdout}\nklink's warnings:\n{}",
            self.process
                .log_text()
                .lines()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
        stdout
    }

    pub fn bootstrap_str(&self) -> String {
        self.bootstrap.to_string()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Starts `klink proxy` and waits until it says it is ready.
pub fn spawn_klink(config: &Path, dir: &Path, generation: u32) -> Process {
    spawn_klink_with(config, dir, generation, &[])
}

/// [`spawn_klink`] with more environment.
pub fn spawn_klink_with(
    config: &Path,
    dir: &Path,
    generation: u32,
    env: &[(String, String)],
) -> Process {
    let mut command = klink_command(config);
    command.envs(env.iter().map(|(k, v)| (k, v)));
    let process = Process::spawn(
        "klink",
        command,
        dir.join(format!("klink-{generation}.log")),
    );
    wait_for_log(&process, "klink ready", Duration::from_secs(30));
    process
}

pub fn klink_command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
    command
        .args(["proxy", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("KLINK_TEST_LOG").unwrap_or_else(|_| "info,klink=debug".into()),
        )
        .env("NO_COLOR", "1");
    command
}

pub fn wait_for_log(process: &Process, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if process.log_text().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{} never logged {needle:?}; log:\n{}",
        process.name,
        process.log_text()
    );
}

/// Runs a command to completion with a time bound, returning stdout; stderr
/// is kept for the panic message.
pub fn run_bounded(mut command: Command, within: Duration) -> (ExitStatus, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let collect = |stream: Box<dyn std::io::Read + Send>| {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        let handle = std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut t = sink.lock().expect("lock");
                t.push_str(&line);
                t.push('\n');
            }
        });
        (text, handle)
    };
    let (out, out_thread) = collect(Box::new(stdout));
    let (err, err_thread) = collect(Box::new(stderr));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = err_thread.join();
            panic!(
                "{command:?} did not finish within {within:?}; stderr:\n{}",
                err.lock().expect("lock")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = out_thread.join();
    let _ = err_thread.join();
    let out = out.lock().expect("lock").clone();
    let err = err.lock().expect("lock").clone();
    (status, out, err)
}
