//! A TCP proxy between a client and the test broker, to cut that client
//! off (an outage, a black-holed network) without touching the broker that
//! every other test uses.

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Forwards connections to the broker of `AMQP_URL` until cut off.
pub struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
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
        let (cut, state) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, broker_address(&crate::amqp_url()), state));
        Proxy {
            port,
            cut,
            _tasks: tasks,
        }
    }

    /// The test broker's URL, through this proxy.
    pub fn url(&self) -> String {
        let url = crate::amqp_url();
        let address = broker_address(&url);
        url.replacen(&address, &format!("127.0.0.1:{}", self.port), 1)
    }

    /// Drops every forwarded connection; new ones are accepted and never
    /// answered, as a black-holed network does.
    pub fn black_hole(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again (the connections held unanswered are dropped).
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

/// `host:port` of an AMQP URL.
fn broker_address(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or(after_scheme);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

async fn accept(listener: TcpListener, target: String, state: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    while let Ok((inbound, _)) = listener.accept().await {
        connections.spawn(forward(inbound, target.clone(), state.clone()));
    }
}

/// Forwards one connection until either side closes or the proxy is cut.
async fn forward(mut inbound: TcpStream, target: String, mut state: watch::Receiver<bool>) {
    if *state.borrow() {
        // Black-holed: hold the socket, answer nothing, until restored.
        let _ = state.wait_for(|cut| !cut).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(&target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = state.wait_for(|cut| *cut) => {}
    }
}
