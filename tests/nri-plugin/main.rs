//! An NRI plugin written for the tests, from NRI's protocol description and independently
//! of podrund's side: it connects to the runtime's NRI socket, multiplexes its two ttrpc
//! connections over it, registers, subscribes to the lifecycle events, writes each event
//! it sees as a line to a log file, and adjusts every container it is asked about: an env
//! variable, an annotation, a mount of a host directory, a memory limit.
//!
//! Usage: podrun-nri-test-plugin SOCKET LOG MOUNT_SOURCE [INDEX [stall]]
//! With `stall` it never answers CreateContainer (and stops reading), as a hung plugin.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use podrun_proto::nri as api;
use podrun_proto::ttrpc;
use prost::Message;

/// NRI's multiplexer: connection 1 carries the plugin's service, 2 the runtime's.
const PLUGIN: u32 = 1;
const RUNTIME: u32 = 2;

struct Trunk {
    out: Mutex<UnixStream>,
}

impl Trunk {
    /// A ttrpc message (10-byte header) in one mux frame (8-byte header).
    fn send(&self, conn: u32, stream: u32, kind: u8, payload: &[u8]) {
        let mut frame = Vec::new();
        frame.extend(conn.to_be_bytes());
        frame.extend(((10 + payload.len()) as u32).to_be_bytes());
        frame.extend((payload.len() as u32).to_be_bytes());
        frame.extend(stream.to_be_bytes());
        frame.extend([kind, 0]);
        frame.extend(payload);
        self.out.lock().unwrap().write_all(&frame).unwrap();
    }
}

fn log(path: &str, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// The answer to one call of the Plugin service.
fn serve(
    method: &str,
    payload: &[u8],
    log_path: &str,
    source: &str,
    index: &str,
    stall: bool,
) -> Vec<u8> {
    match method {
        "Configure" => {
            let c = api::ConfigureRequest::decode(payload).unwrap();
            log(
                log_path,
                &format!("configure {} {}", c.runtime_name, c.nri_version),
            );
            use api::Event::*;
            let events = [
                RunPodSandbox,
                StopPodSandbox,
                RemovePodSandbox,
                CreateContainer,
                StartContainer,
                StopContainer,
                RemoveContainer,
            ]
            .iter()
            .fold(0, |mask, e| mask | 1 << (*e as i32 - 1));
            api::ConfigureResponse { events }.encode_to_vec()
        }
        "Synchronize" => {
            let s = api::SynchronizeRequest::decode(payload).unwrap();
            log(
                log_path,
                &format!(
                    "synchronize pods={} containers={}",
                    s.pods.len(),
                    s.containers.len()
                ),
            );
            api::SynchronizeResponse {
                update: vec![],
                more: s.more,
            }
            .encode_to_vec()
        }
        "CreateContainer" => {
            let r = api::CreateContainerRequest::decode(payload).unwrap();
            let (pod, c) = (r.pod.unwrap(), r.container.unwrap());
            log(
                log_path,
                &format!("CREATE_CONTAINER {} {}", pod.name, c.name),
            );
            if stall {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
            let adjust = api::ContainerAdjustment {
                annotations: [("nri.test/plugin".to_owned(), index.to_owned())].into(),
                env: vec![api::KeyValue {
                    key: "NRI_PLUGIN".into(),
                    value: format!("{index}-{}", c.name),
                }],
                mounts: vec![api::Mount {
                    destination: "/nri".into(),
                    r#type: "bind".into(),
                    source: source.into(),
                    options: vec!["rbind".into(), "ro".into()],
                }],
                linux: Some(api::LinuxContainerAdjustment {
                    resources: Some(api::LinuxResources {
                        memory: Some(api::LinuxMemory {
                            limit: Some(api::OptionalInt64 { value: 96 << 20 }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            api::CreateContainerResponse {
                adjust: Some(adjust),
                ..Default::default()
            }
            .encode_to_vec()
        }
        "StopContainer" => {
            let r = api::StopContainerRequest::decode(payload).unwrap();
            let name = r.container.map(|c| c.name).unwrap_or_default();
            log(
                log_path,
                &format!("STOP_CONTAINER {} {name}", r.pod.unwrap().name),
            );
            api::StopContainerResponse::default().encode_to_vec()
        }
        "StateChange" => {
            let e = api::StateChangeEvent::decode(payload).unwrap();
            let event = api::Event::try_from(e.event).unwrap();
            let name = e.container.map(|c| c.name).unwrap_or_default();
            let line = format!("{} {} {name}", event.as_str_name(), e.pod.unwrap().name);
            log(log_path, line.trim_end());
            api::Empty {}.encode_to_vec()
        }
        other => panic!("unexpected call {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (socket, log_path, source) = (&args[1], args[2].clone(), args[3].clone());
    let index = args.get(4).cloned().unwrap_or_else(|| "10".into());
    let stall = args.get(5).is_some_and(|a| a == "stall");
    let stream = UnixStream::connect(socket).expect("connecting to the NRI socket");
    let trunk = Arc::new(Trunk {
        out: Mutex::new(stream.try_clone().unwrap()),
    });
    // Register on the runtime's service (a call from us: odd stream id).
    let register = api::RegisterPluginRequest {
        plugin_name: "podrun-test".into(),
        plugin_idx: index.clone(),
        nri_version: "v0.12.2".into(),
    };
    let request = ttrpc::Request {
        service: "nri.pkg.api.v1alpha1.Runtime".into(),
        method: "RegisterPlugin".into(),
        payload: register.encode_to_vec(),
        ..Default::default()
    };
    trunk.send(RUNTIME, 1, 1, &request.encode_to_vec());
    // Read frames; reassemble each connection's ttrpc messages.
    let mut input = stream;
    let mut buffers: [Vec<u8>; 3] = Default::default();
    loop {
        let mut header = [0u8; 8];
        if input.read_exact(&mut header).is_err() {
            log(&log_path, "disconnected");
            return;
        }
        let conn = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
        let mut payload = vec![0; len];
        input.read_exact(&mut payload).unwrap();
        buffers[conn].extend(payload);
        while buffers[conn].len() >= 10 {
            let size = u32::from_be_bytes(buffers[conn][..4].try_into().unwrap()) as usize;
            if buffers[conn].len() < 10 + size {
                break;
            }
            let message: Vec<u8> = buffers[conn].drain(..10 + size).collect();
            let stream_id = u32::from_be_bytes(message[4..8].try_into().unwrap());
            match (conn as u32, message[8]) {
                (PLUGIN, 1) => {
                    let request = ttrpc::Request::decode(&message[10..]).unwrap();
                    let answer = serve(
                        &request.method,
                        &request.payload,
                        &log_path,
                        &source,
                        &index,
                        stall,
                    );
                    let response = ttrpc::Response {
                        status: None,
                        payload: answer,
                    };
                    trunk.send(PLUGIN, stream_id, 2, &response.encode_to_vec());
                }
                (RUNTIME, 2) => log(&log_path, "registered"),
                other => panic!("unexpected message {other:?}"),
            }
        }
    }
}
