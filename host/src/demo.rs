//! `weir demo`: small tagged backends and weir in front of them on the
//! bundled quick-start config, for a first look without any setup.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bundled quick-start config.
pub const QUICKSTART: &str = include_str!("../../examples/quickstart.toml");

/// Serve `name` on `listener`: HTTP requests get `hello from NAME`, any
/// other bytes are echoed back prefixed with `NAME: `.
pub async fn tagged_backend(listener: TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &name)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 << 10];
    let mut len = 0;
    loop {
        let n = stream.read(&mut buf[len..]).await?;
        len += n;
        if n == 0 || buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
            break;
        }
    }
    let data = &buf[..len];
    let is_http = data
        .split(|&b| b == b' ')
        .next()
        .is_some_and(|m| matches!(m, b"GET" | b"HEAD" | b"POST" | b"PUT" | b"DELETE" | b"OPTIONS" | b"PATCH"));
    if is_http {
        let body = format!("hello from {name}\n");
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {name}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(reply.as_bytes()).await?;
    } else {
        stream.write_all(format!("{name}: ").as_bytes()).await?;
        stream.write_all(data).await?;
    }
    stream.shutdown().await
}

/// Start one tagged backend per address, named `backend-1`, `backend-2`, ...
pub async fn start_backends(addrs: &[SocketAddr]) -> std::io::Result<()> {
    for (i, addr) in addrs.iter().enumerate() {
        let listener = TcpListener::bind(addr).await?;
        tokio::spawn(tagged_backend(listener, format!("backend-{}", i + 1)));
    }
    Ok(())
}
