//! A RabbitMQ node of a test's own: its own name, ports, config and data
//! directory (owned by the `rabbitmq` user), for tests that need a TLS
//! listener or that alarm or restart a broker, which the shared one must
//! never see. It starts in about 5 s and is stopped, and its directory
//! removed, when dropped (a failing test included).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::certificates::Certificates;

/// How long a node may take to start.
const START_TIMEOUT_SECONDS: &str = "60";

/// What a node is started with.
#[derive(Default)]
pub struct NodeSpec<'a> {
    /// Certificates for a TLS listener (peer verification on, a client
    /// certificate optional, EXTERNAL auth offered).
    pub tls: Option<&'a Certificates>,
    /// Lines appended to `rabbitmq.conf`.
    pub config: Vec<String>,
    /// Erlang schedulers (the default: one per core), fewer for a cluster
    /// of several nodes on one small machine.
    pub schedulers: Option<u32>,
}

/// A running node of the test's own.
pub struct Node {
    name: String,
    dir: PathBuf,
    /// The plain AMQP port.
    pub amqp_port: u16,
    /// The TLS port, when the node has a TLS listener.
    pub tls_port: Option<u16>,
}

impl Node {
    /// Starts a node named after `label` (unique per test process) and waits
    /// until it accepts connections.
    pub fn start(label: &str, spec: NodeSpec<'_>) -> Node {
        let name = format!("eda-{label}-{}@localhost", std::process::id());
        let dir = std::env::temp_dir().join(format!("eda-node-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("node directory");
        std::fs::create_dir_all(dir.join("log")).expect("node log directory");
        let [amqp_port, tls_port, dist_port] = free_ports();
        let mut config = vec![
            format!("listeners.tcp.default = 127.0.0.1:{amqp_port}"),
            "loopback_users = none".to_owned(),
        ];
        let mut plugins = Vec::new();
        if let Some(certificates) = spec.tls {
            let installed = certificates.copy_to(&dir.join("tls"));
            config.extend([
                format!("listeners.ssl.default = 127.0.0.1:{tls_port}"),
                format!("ssl_options.cacertfile = {}", installed.ca.display()),
                format!("ssl_options.certfile = {}", installed.server_cert.display()),
                format!("ssl_options.keyfile = {}", installed.server_key.display()),
                "ssl_options.verify = verify_peer".to_owned(),
                "ssl_options.fail_if_no_peer_cert = false".to_owned(),
                "auth_mechanisms.1 = PLAIN".to_owned(),
                "auth_mechanisms.2 = AMQPLAIN".to_owned(),
                "auth_mechanisms.3 = EXTERNAL".to_owned(),
                "ssl_cert_login_from = common_name".to_owned(),
            ]);
            plugins.push("rabbitmq_auth_mechanism_ssl");
        }
        config.extend(spec.config);
        std::fs::write(dir.join("rabbitmq.conf"), config.join("\n") + "\n").expect("config");
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("plugins file");
        as_rabbitmq_owner(&dir);
        let node = Node {
            name,
            dir,
            amqp_port,
            tls_port: spec.tls.is_some().then_some(tls_port),
        };
        let status = node
            .command("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODE_PORT", amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", node.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", node.dir.join("data"))
            .env("RABBITMQ_LOG_BASE", node.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                node.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", node.pid_file())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                spec.schedulers
                    .map(|count| format!("+S {count}:{count}"))
                    .unwrap_or_default(),
            )
            .status()
            .expect("rabbitmq-server runs");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let pid_file = node.pid_file();
        let waited = node.try_ctl(&[
            "wait",
            &pid_file.display().to_string(),
            "--timeout",
            START_TIMEOUT_SECONDS,
        ]);
        if let Err(error) = waited {
            panic!(
                "node {} did not start: {error}\n{}",
                node.name,
                node.log_tail()
            );
        }
        node
    }

    /// The node's name (`eda-<label>-<pid>@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes this (freshly started) node join `other`'s cluster.
    pub fn join(&self, other: &Node) {
        self.ctl(&["stop_app"]);
        self.ctl(&["join_cluster", other.name()]);
        self.ctl(&["start_app"]);
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` on the plain listener.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `amqps://...@localhost:PORT/%2f` on the TLS listener, with `userinfo`
    /// (e.g. `guest:guest@`, or empty) and `query` (e.g. `?auth_mechanism=external`).
    pub fn amqps_url(&self, userinfo: &str, query: &str) -> String {
        let port = self.tls_port.expect("the node has a TLS listener");
        format!("amqps://{userinfo}localhost:{port}/%2f{query}")
    }

    /// Runs `rabbitmqctl` against this node; panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|error| panic!("rabbitmqctl {args:?} on {}: {error}", self.name))
    }

    fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let output = self
            .command("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .map_err(|error| error.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `program` run as the `rabbitmq` user (the node's files are its), with
    /// the node's name.
    fn command(&self, program: &str) -> Command {
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "rabbitmq", "--", program]);
            command
        } else {
            Command::new(program)
        };
        command
            .current_dir(&self.dir)
            .env("RABBITMQ_NODENAME", &self.name);
        command
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    fn log_tail(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(error) = self.try_ctl(&["stop"]) {
            eprintln!("could not stop node {}: {error}", self.name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three ports free right now (the OS's ephemeral ones, not reused at once).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    let port = |index: usize| listeners[index].local_addr().expect("bound address").port();
    [port(0), port(1), port(2)]
}

pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Hands `dir` to the `rabbitmq` user (when running as root), so the node
/// can write its data and read its config and certificates.
fn as_rabbitmq_owner(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir)
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown {} to rabbitmq", dir.display());
    }
}
