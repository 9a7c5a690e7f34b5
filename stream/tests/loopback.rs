//! Server and client of this crate against each other over real TCP on 127.0.0.1, both
//! transports: an echoing "process", exit codes, terminal sizes and port forwarding.

use std::convert::Infallible;
use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use podrun_stream::{
    exec, portforward, remotecommand, Options, Outcome, PortForwarder, Streams, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The session every exec URL runs: echoes stdin to stdout upper-cased, writes the first
/// terminal size it gets to stderr or stdout, and exits with the number stdin ended with.
async fn session(mut s: Streams) -> Outcome {
    let mut input = Vec::new();
    if let Some(stdin) = s.stdin.as_mut() {
        stdin.read_to_end(&mut input).await.unwrap();
    }
    let text = String::from_utf8_lossy(&input).to_string();
    let mut out = s.stdout.take().unwrap();
    out.write_all(text.to_uppercase().as_bytes()).await.unwrap();
    if let Some(mut sizes) = s.resize.take() {
        let size = sizes.recv().await.unwrap();
        out.write_all(format!("size {}x{}\n", size.width, size.height).as_bytes())
            .await
            .unwrap();
    }
    if let Some(mut err) = s.stderr.take() {
        err.write_all(b"to stderr\n").await.unwrap();
    }
    let code = text
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Outcome::Exited(code)
}

async fn serve(tty: bool) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = echo.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let opts = Options {
                            stdin: true,
                            stdout: true,
                            stderr: !tty,
                            tty,
                        };
                        let resp = match req.uri().path() {
                            "/exec" => remotecommand(req, opts, |s| Box::pin(session(s))),
                            _ => portforward(req, vec![], move |port| {
                                Box::pin(async move {
                                    // "7" stands for the echo server; anything else is refused.
                                    let port = if port == 7 { echo_port } else { port };
                                    tokio::net::TcpStream::connect(("127.0.0.1", port))
                                        .await
                                        .map_err(|e| e.to_string())
                                })
                            }),
                        };
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn run(transport: Transport, tty: bool, input: &str) -> (String, String, Outcome) {
    let addr = serve(tty).await;
    let opts = Options {
        stdin: true,
        stdout: true,
        stderr: !tty,
        tty,
    };
    let mut s = exec(&format!("http://{addr}/exec"), transport, opts)
        .await
        .unwrap();
    if let Some(resize) = s.resize.take() {
        resize
            .send(podrun_stream::TerminalSize {
                width: 120,
                height: 40,
            })
            .await
            .unwrap();
    }
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let (mut out, mut err) = (String::new(), String::new());
    s.stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    if let Some(mut e) = s.stderr.take() {
        e.read_to_string(&mut err).await.unwrap();
    }
    (out, err, s.outcome().await)
}

#[tokio::test]
async fn exec_over_spdy_carries_stdio_and_exit_codes() {
    let (out, err, outcome) = run(Transport::Spdy, false, "hello exit 3").await;
    assert_eq!(
        (out.as_str(), err.as_str(), outcome),
        ("HELLO EXIT 3", "to stderr\n", Outcome::Exited(3))
    );
    let (_, _, outcome) = run(Transport::Spdy, false, "fine 0").await;
    assert_eq!(outcome, Outcome::Exited(0));
}

#[tokio::test]
async fn exec_over_websocket_carries_stdio_and_exit_codes() {
    let (out, err, outcome) = run(Transport::WebSocket, false, "hello exit 4").await;
    assert_eq!(
        (out.as_str(), err.as_str(), outcome),
        ("HELLO EXIT 4", "to stderr\n", Outcome::Exited(4))
    );
}

#[tokio::test]
async fn terminal_sizes_arrive_over_both_transports() {
    for t in [Transport::Spdy, Transport::WebSocket] {
        let (out, _, outcome) = run(t, true, "x 0").await;
        assert_eq!(out, "X 0size 120x40\n", "{t:?}");
        assert_eq!(outcome, Outcome::Exited(0));
    }
}

#[tokio::test]
async fn port_forward_serves_many_connections_and_reports_a_refused_port() {
    let addr = serve(false).await;
    let url = format!("http://{addr}/portforward");
    let pf = PortForwarder::connect(&url, Transport::Spdy, &[])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    let pf = std::sync::Arc::new(pf);
    for i in 0..5 {
        let pf = pf.clone();
        tasks.push(tokio::spawn(async move {
            let mut f = pf.open(7).await.unwrap();
            let msg = format!("message {i}");
            f.pipe.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            f.pipe.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg.as_bytes());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Port 1 refuses: the error stream says so, and the session serves on.
    let refused = pf.open(1).await.unwrap();
    let why = refused
        .error
        .await
        .unwrap()
        .expect("an error for a closed port");
    assert!(why.contains("refused"), "{why}");
    let mut again = pf.open(7).await.unwrap();
    again.pipe.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    again.pipe.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
    // WebSocket: one connection per port asked for.
    let ws = PortForwarder::connect(&url, Transport::WebSocket, &[7, 1])
        .await
        .unwrap();
    let mut f = ws.open(7).await.unwrap();
    f.pipe.write_all(b"over ws").await.unwrap();
    let mut buf = [0u8; 7];
    f.pipe.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over ws");
    let refused = ws.open(1).await.unwrap();
    let why = refused
        .error
        .await
        .unwrap()
        .expect("an error for a closed port");
    assert!(why.contains("refused"), "{why}");
}
