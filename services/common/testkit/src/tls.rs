//! A TLS listener on loopback for tests of clients that speak TLS to a dependency (a broker, a
//! webhook), with whatever certificate the test builds.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Listens on a loopback port with `config`; each handshake that completes is handed to `serve` on
/// a task of its own (one that does not complete is dropped). Returns the port.
///
/// # Panics
/// No loopback port can be bound.
pub async fn tls_listener<F, Fut>(config: rustls::ServerConfig, serve: F) -> u16
where
    F: Fn(TlsStream<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("its address").port();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, serve) = (acceptor.clone(), Arc::clone(&serve));
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls).await;
                }
            });
        }
    });
    port
}
