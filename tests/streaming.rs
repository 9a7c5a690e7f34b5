//! CRI streaming against a real podrund: Exec, Attach and PortForward URLs served over
//! SPDY and WebSocket to real containers (crun), with podrun's own client, podctl, and one
//! client that is not ours (the `kubernetes` Python client's WebSocket stream).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use podrun_proto::cri;
use podrun_stream::{exec, Options, Outcome, PortForwarder, Session, TerminalSize, Transport};
use podrun_tests::bin_dir;
use podrun_tests::workload::Bed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOTH: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];

async fn exec_url(
    bed: &mut Bed,
    id: &str,
    cmd: &[&str],
    opts: Options,
) -> Result<String, tonic::Status> {
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: opts.tty,
        stdin: opts.stdin,
        stdout: opts.stdout,
        stderr: opts.stderr,
    };
    bed.rt.exec(req).await.map(|r| r.into_inner().url)
}

async fn start(bed: &mut Bed, id: &str, cmd: &[&str], opts: Options, t: Transport) -> Session {
    let url = exec_url(bed, id, cmd, opts).await.expect("Exec");
    exec(&url, t, opts)
        .await
        .expect("connecting to the exec URL")
}

async fn read_all(pipe: Option<podrun_stream::Pipe>) -> String {
    let mut s = String::new();
    if let Some(mut p) = pipe {
        p.read_to_string(&mut s).await.unwrap();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_and_without_a_terminal_over_both_transports() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("exec", "").await;
    let id = bed
        .run(&pod, bed.container("sleeper", &["sleep", "2000"]))
        .await;
    for t in BOTH {
        // Pipes: stdin in, stdout and stderr apart, the exit code.
        let opts = Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        };
        let cmd = ["sh", "-c", "cat; echo to-err >&2; exit 3"];
        let mut s = start(&mut bed, &id, &cmd, opts, t).await;
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"echo me\n").await.unwrap();
        drop(stdin);
        let (out, err) = tokio::join!(read_all(s.stdout.take()), read_all(s.stderr.take()));
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("echo me\n", "to-err\n"),
            "{t:?}"
        );
        assert_eq!(s.outcome().await, Outcome::Exited(3), "{t:?}");

        let opts = Options {
            stdout: true,
            ..Default::default()
        };
        let mut s = start(&mut bed, &id, &["true"], opts, t).await;
        assert_eq!(read_all(s.stdout.take()).await, "");
        assert_eq!(s.outcome().await, Outcome::Exited(0), "{t:?}");

        // A terminal: the size the client sends is the one the process sees.
        let opts = Options {
            stdin: true,
            stdout: true,
            stderr: false,
            tty: true,
        };
        let cmd = ["sh", "-c", "read line; echo got:$line; stty size; exit 5"];
        let mut s = start(&mut bed, &id, &cmd, opts, t).await;
        let resize = s.resize.take().expect("a resize stream with a tty");
        resize
            .send(TerminalSize {
                width: 100,
                height: 30,
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"hello\r").await.unwrap();
        let out = read_all(s.stdout.take()).await;
        assert!(
            out.contains("got:hello") && out.contains("30 100"),
            "{t:?}: {out:?}"
        );
        assert_eq!(s.outcome().await, Outcome::Exited(5), "{t:?}");
        drop((stdin, resize));
    }
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_sees_later_output_and_serves_two_clients_at_once() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("attach", "").await;
    let mut config = bed.container(
        "reader",
        &[
            "sh",
            "-c",
            "while read l; do echo got:$l; done; echo stdin-ended",
        ],
    );
    config.stdin = true;
    let id = bed.run(&pod, config).await;
    let attach = |stdin: bool| cri::AttachRequest {
        container_id: id.clone(),
        stdin,
        tty: false,
        stdout: true,
        stderr: true,
    };
    let url_a = bed.rt.attach(attach(true)).await.unwrap().into_inner().url;
    let url_b = bed.rt.attach(attach(false)).await.unwrap().into_inner().url;
    let mut a = exec(
        &url_a,
        Transport::Spdy,
        Options {
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        },
    )
    .await
    .unwrap();
    let mut b = exec(
        &url_b,
        Transport::WebSocket,
        Options {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stdin = a.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\n").await.unwrap();
    for (name, s) in [("a", &mut a), ("b", &mut b)] {
        let mut out = s.stdout.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen.contains("got:two") && Instant::now() < deadline {
            let n = tokio::time::timeout(Duration::from_secs(10), out.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(seen, "got:one\ngot:two\n", "client {name}");
    }
    drop(stdin);
    // The container's output ending (its stdin stays open: stop it) ends both sessions.
    bed.rt
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), a.outcome())
            .await
            .unwrap(),
        Outcome::Exited(0)
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), b.outcome())
            .await
            .unwrap(),
        Outcome::Exited(0)
    );
    // Attaching stdin to a container made without one is refused before any URL.
    let plain = bed
        .run(&pod, bed.container("plain", &["sleep", "100"]))
        .await;
    let err = bed
        .rt
        .attach(cri::AttachRequest {
            container_id: plain,
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// critest's attach: a `stdin_once` shell in a pod without a log directory. What the client
/// writes reaches the shell, its output (no newline) reaches the client, and the client's
/// end of input ends the session and, with `stdin_once`, the container's stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_with_stdin_once_and_no_log_ends_with_the_clients_input() {
    let mut bed = Bed::start().await;
    let pod_config = bed.node.pod_config("once");
    assert!(pod_config.log_directory.is_empty());
    let pod = bed
        .rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    bed.node.remember(&pod);
    let mut config = bed.container("shell", &["/bin/sh"]);
    config.stdin = true;
    config.stdin_once = true;
    config.log_path = String::new();
    let id = bed.run(&(pod.clone(), pod_config), config).await;
    let url = bed
        .rt
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let opts = Options {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let mut session = exec(&url, Transport::Spdy, opts).await.unwrap();
    let mut stdin = session.stdin.take().unwrap();
    stdin.write_all(b"echo -n hello\n").await.unwrap();
    let mut out = session.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while seen != b"hello" {
        let n = tokio::time::timeout(Duration::from_secs(10), out.read(&mut buf))
            .await
            .expect("the shell's output reaches the client")
            .unwrap();
        assert!(
            n > 0,
            "output ended after {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stdin);
    let stderr = session.stderr.take();
    let outcome = tokio::time::timeout(Duration::from_secs(10), session.outcome()).await;
    assert_eq!(
        outcome.expect("closing stdin ends the session"),
        Outcome::Exited(0)
    );
    assert_eq!(read_all(stderr).await, "");
    // stdin_once: the container's stdin ended with the client's, so the shell exits.
    let status = bed.wait_exit(&id).await;
    assert_eq!(status.exit_code, 0, "{status:?}");
    bed.remove_pod(&pod).await;
    bed.assert_no_leaks();
}

async fn http_get(pf: &PortForwarder, port: u16) -> String {
    let mut f = pf.open(port).await.unwrap();
    f.pipe
        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    f.pipe.read_to_string(&mut page).await.unwrap();
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_reaches_pods_and_host_network_pods_and_reports_closed_ports() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("forward", "").await;
    let web = [
        "sh",
        "-c",
        "echo page-in-pod > /tmp/index.html; httpd -f -p 8080 -h /tmp",
    ];
    bed.run(&pod, bed.container("web", &web)).await;
    let url = |bed: &mut Bed, pod: String, ports: Vec<i32>| {
        let req = cri::PortForwardRequest {
            pod_sandbox_id: pod,
            port: ports,
        };
        let mut rt = bed.rt.clone();
        async move { rt.port_forward(req).await.unwrap().into_inner().url }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u = url(&mut bed, pod.0.clone(), vec![]).await;
    let pf = std::sync::Arc::new(
        PortForwarder::connect(&u, Transport::Spdy, &[])
            .await
            .unwrap(),
    );
    let mut gets = Vec::new();
    for _ in 0..6 {
        let pf = pf.clone();
        gets.push(tokio::spawn(async move { http_get(&pf, 8080).await }));
    }
    for g in gets {
        let page = g.await.unwrap();
        assert!(
            page.starts_with("HTTP/1.") && page.ends_with("page-in-pod\n"),
            "{page}"
        );
    }
    let closed = pf.open(9).await.unwrap();
    let why = closed
        .error
        .await
        .unwrap()
        .expect("an error for a closed port");
    assert!(why.contains("refused"), "{why}");
    assert!(
        http_get(&pf, 8080).await.ends_with("page-in-pod\n"),
        "the forwarder serves on"
    );

    let u = url(&mut bed, pod.0.clone(), vec![8080]).await;
    let ws = PortForwarder::connect(&u, Transport::WebSocket, &[8080])
        .await
        .unwrap();
    assert!(http_get(&ws, 8080).await.ends_with("page-in-pod\n"));

    // A hostNetwork pod: the node's localhost.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        ..Default::default()
    };
    let mut host = bed.node.pod_config_with("hostnet", options);
    host.log_directory = bed.node.dir.join("logs/hostnet").display().to_string();
    let host_id = bed.node.run_pod(&mut bed.rt, host.clone()).await.unwrap();
    let serve =
        format!("echo page-on-node > /tmp/index.html; httpd -f -p 127.0.0.1:{port} -h /tmp");
    bed.run(
        &(host_id.clone(), host),
        bed.container("hostweb", &["sh", "-c", &serve]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u = url(&mut bed, host_id.clone(), vec![]).await;
    let pf = PortForwarder::connect(&u, Transport::Spdy, &[])
        .await
        .unwrap();
    assert!(http_get(&pf, port).await.ends_with("page-on-node\n"));
    bed.remove_pod(&host_id).await;
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_single_use_and_expire_and_bad_requests_are_refused() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("tokens", "").await;
    let id = bed
        .run(&pod, bed.container("sleeper", &["sleep", "2000"]))
        .await;
    let opts = Options {
        stdout: true,
        ..Default::default()
    };
    let url = exec_url(&mut bed, &id, &["echo", "once"], opts)
        .await
        .unwrap();
    let mut s = exec(&url, Transport::Spdy, opts).await.unwrap();
    assert_eq!(read_all(s.stdout.take()).await, "once\n");
    s.outcome().await;
    for t in BOTH {
        let err = exec(&url, t, opts)
            .await
            .err()
            .expect("a used URL is refused");
        assert!(err.to_string().contains("404"), "{t:?}: {err}");
    }
    // podrund here keeps unused URLs for 5 s.
    let url = exec_url(&mut bed, &id, &["echo", "late"], opts)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let err = exec(&url, Transport::WebSocket, opts)
        .await
        .err()
        .expect("an expired URL is refused");
    assert!(err.to_string().contains("404"), "{err}");

    let bad = |tty, stderr, cmd: &[&str], id: &str| cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin: false,
        stdout: true,
        stderr,
    };
    let e = bed
        .rt
        .exec(bad(true, true, &["sh"], &id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("stderr"), "{e:?}");
    let e = bed.rt.exec(bad(false, false, &[], &id)).await.unwrap_err();
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("cmd"),
        "{e:?}"
    );
    let e = bed
        .rt
        .exec(bad(false, false, &["sh"], "no-such-container"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn pid_of(needle: &str) -> Vec<i32> {
    podrun_tests::processes_mentioning(needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sessions_dropped_abruptly_leave_no_processes_fds_or_fifos() {
    let mut bed = Bed::start().await;
    let pod = bed.pod("drops", "").await;
    let id = bed
        .run(&pod, bed.container("sleeper", &["sleep", "2000"]))
        .await;
    let state = bed.node.dir.join("state");
    let podrund: Vec<i32> = bed.node.daemon_pid().into_iter().collect();
    let shim = pid_of(&format!("-id {}", pod.0));
    assert_eq!(
        (podrund.len(), shim.len()),
        (1, 1),
        "podrund {podrund:?}, shim {shim:?}"
    );
    let before = (fds(podrund[0]), fds(shim[0]));
    for i in 0..50 {
        let transport = if i % 2 == 0 { "spdy" } else { "websocket" };
        let tty = if i % 3 == 0 { "-it" } else { "-i" };
        let mut child = Command::new(bin_dir().join("podctl"))
            .arg("-r")
            .arg(&bed.node.socket)
            .args([
                "exec",
                tty,
                "--transport",
                transport,
                &id,
                "--",
                "sleep",
                "1001",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let gone = |bed: &Bed| {
        let execs = pid_of("sleep 1001").len();
        let fifos = std::fs::read_dir(state.join("containers").join(&id))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
                    .count()
            })
            .unwrap_or(0);
        let _ = bed;
        (execs, fifos, fds(podrund[0]), fds(shim[0]))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now = gone(&bed);
    while (now.0, now.1) != (0, 0) || now.2 > before.0 + 2 || now.3 > before.1 + 2 {
        assert!(Instant::now() < deadline, "after 50 dropped sessions: (execs, fifos, podrund fds, shim fds) = {now:?}, before {before:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        now = gone(&bed);
    }
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}

/// The `kubernetes` Python client (installed by hack/setup) pointed at an Exec URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_python_client_execs_over_websocket() {
    let python = std::path::Path::new("/opt/podrun-test-venv/bin/python");
    assert!(
        python.exists(),
        "{} missing: run hack/setup --packages-only (it installs the kubernetes Python client)",
        python.display()
    );
    let mut bed = Bed::start().await;
    let pod = bed.pod("python", "").await;
    let id = bed
        .run(&pod, bed.container("sleeper", &["sleep", "2000"]))
        .await;
    let opts = Options {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let cmd = ["sh", "-c", "head -n1; echo out; echo err >&2; exit 7"];
    let url = exec_url(&mut bed, &id, &cmd, opts).await.unwrap();
    let script = r#"
import json, sys
from kubernetes.client import Configuration
from kubernetes.stream.ws_client import WSClient
ws = WSClient(Configuration(), sys.argv[1].replace("http://", "ws://", 1), headers=None, capture_all=True)
ws.write_stdin("from python\n")
ws.run_forever(timeout=20)
print(json.dumps({"stdout": ws.read_stdout(timeout=1) or "", "stderr": ws.read_stderr(timeout=1) or "", "rc": ws.returncode, "protocol": ws.subprotocol}))
"#;
    let out = Command::new(python)
        .args(["-c", script, &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["stdout"], "from python\nout\n", "{got}");
    assert_eq!(got["stderr"], "err\n", "{got}");
    assert_eq!(got["rc"], 7, "{got}");
    bed.remove_pod(&pod.0).await;
    bed.assert_no_leaks();
}
