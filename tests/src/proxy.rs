//! A TCP proxy between a client and the test broker, to cut that client
//! off (an outage, a black-holed network) without touching the broker that
//! every other test uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards connections to the broker of `AMQP_URL` until cut off.
pub struct Proxy {
    port: u16,
    cut: watch::Sender<Cut>,
    accepted: Arc<AtomicUsize>,
    /// The accept loop; its connections' tasks end with it (dropped: aborted).
    _tasks: JoinSet<()>,
}

impl Proxy {
    /// Listens on a free local port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let port = listener.local_addr().expect("a bound address").port();
        let (cut, state) = watch::channel(Cut::default());
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let target = broker_address(&crate::amqp_url());
        tasks.spawn(accept(listener, target, state, accepted.clone()));
        Proxy {
            port,
            cut,
            accepted,
            _tasks: tasks,
        }
    }

    /// The test broker's URL (its credentials, vhost and options), through this proxy.
    pub fn url(&self) -> String {
        let url = crate::amqp_url();
        let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", &url));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let credentials = authority
            .rsplit_once('@')
            .map_or(String::new(), |(credentials, _)| format!("{credentials}@"));
        format!("{scheme}://{credentials}127.0.0.1:{}/{path}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every forwarded connection; new ones are accepted and never
    /// answered, as a black-holed network does.
    pub fn black_hole(&self) {
        self.cut.send_modify(|cut| {
            cut.black_holed = true;
            cut.generation += 1;
        });
    }

    /// Forwards again (the connections held unanswered are dropped).
    pub fn restore(&self) {
        self.cut.send_modify(|cut| cut.black_holed = false);
    }

    /// Drops every forwarded connection, as a broker or a load balancer
    /// closing them does; new ones are forwarded at once.
    pub fn cut(&self) {
        self.cut.send_modify(|cut| cut.generation += 1);
    }

    /// Drops every forwarded connection and closes new ones at once, as a
    /// node that died does (its port refuses).
    pub fn down(&self) {
        self.cut.send_modify(|cut| {
            cut.down = true;
            cut.generation += 1;
        });
    }
}

/// What the proxy does to connections.
#[derive(Debug, Clone, Copy, Default)]
struct Cut {
    /// New connections are held unanswered.
    black_holed: bool,
    /// Bumped to drop every connection forwarded so far.
    generation: u64,
    /// New connections are closed at once.
    down: bool,
}

/// `host:port` of an AMQP URL.
fn broker_address(url: &str) -> String {
    let authority = crate::broker::parse_amqp_url(url).authority;
    format!("{}:{}", authority.host, authority.port)
}

async fn accept(
    listener: TcpListener,
    target: String,
    state: watch::Receiver<Cut>,
    accepted: Arc<AtomicUsize>,
) {
    let mut connections = JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        accepted.fetch_add(1, Ordering::SeqCst);
        connections.spawn(forward(inbound, target.clone(), state.clone()));
    }
}

/// Forwards one connection until either side closes or the proxy is cut.
async fn forward(mut inbound: TcpStream, target: String, mut state: watch::Receiver<Cut>) {
    let started = *state.borrow();
    if started.down {
        return;
    }
    if started.black_holed {
        // Black-holed: hold the socket, answer nothing, until restored.
        let _ = state.wait_for(|cut| !cut.black_holed).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        // Checked first: once cut, not a byte more goes through.
        biased;
        _ = state.wait_for(|cut| cut.generation != started.generation) => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}
