//! A fault-injecting TCP proxy: a process's link to a server (an agent's to
//! NATS) goes through it, and a test cuts the link and heals it again.
//!
//! Cut, the proxy stops moving bytes both ways but keeps every connection
//! open, as a network partition does: neither end sees a close, and what
//! each sends waits in buffers. Healed, the connections of before are reset,
//! as TCP gives up on a partition longer than its timeouts, and the client
//! reconnects.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Whether the link is cut, and which generation of connections is alive.
#[derive(Clone, Copy)]
struct Link {
    cut: bool,
    generation: u64,
}

pub struct FaultProxy {
    pub port: u16,
    link: Arc<watch::Sender<Link>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let link = Arc::new(watch::Sender::new(Link {
            cut: false,
            generation: 0,
        }));
        let rx = link.subscribe();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, rx.clone()));
            }
        });
        FaultProxy { port, link, task }
    }

    /// Stops every byte, both ways, until `heal`.
    pub fn cut(&self) {
        self.link.send_modify(|l| l.cut = true);
    }

    /// Lets bytes through again; the connections made before are reset.
    pub fn heal(&self) {
        self.link.send_modify(|l| {
            l.cut = false;
            l.generation += 1;
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until the link is up; false once `generation` has been reset.
async fn up(link: &mut watch::Receiver<Link>, generation: u64) -> bool {
    match link
        .wait_for(|l| l.generation != generation || !l.cut)
        .await
    {
        Ok(l) => l.generation == generation,
        Err(_) => false,
    }
}

async fn relay(client: TcpStream, upstream: u16, mut link: watch::Receiver<Link>) {
    // A connection made while the link is cut waits, then is reset with the rest.
    let generation = link.borrow().generation;
    if !up(&mut link, generation).await {
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        () = pump(cr, sw, link.clone(), generation) => {}
        () = pump(sr, cw, link, generation) => {}
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    generation: u64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !up(&mut link, generation).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = link.changed() => continue,
        };
        // Bytes read as the link was cut are held until it heals.
        if !up(&mut link, generation).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
