//! A recording TCP proxy: what each side sent, byte for byte.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP proxy to `target` that records every byte each way: (its address, client to
/// server, server to client).
pub async fn recording_proxy(
    target: SocketAddr,
) -> (
    SocketAddr,
    Arc<std::sync::Mutex<Vec<u8>>>,
    Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to_server = Arc::new(std::sync::Mutex::new(Vec::new()));
    let to_client = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (up, down) = (Arc::clone(&to_server), Arc::clone(&to_client));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pump(client_read, server_write, Arc::clone(&up)));
            tokio::spawn(pump(server_read, client_write, Arc::clone(&down)));
        }
    });
    (addr, to_server, to_client)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
