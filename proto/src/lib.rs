//! CRI `runtime.v1` bindings (tonic + prost), compiled from `cri/runtime/v1/api.proto`:
//! our transcription of Kubernetes cri-api v0.36.3. See proto/README.md.

/// The CRI release our transcription follows.
pub const CRI_API_RELEASE: &str = "k8s.io/cri-api v0.36.3";

#[allow(clippy::all, clippy::pedantic)]
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1 as cri;

/// NRI's messages (`nri/v1alpha1/api.proto`, our transcription of containerd/nri's API).
#[allow(clippy::all, clippy::pedantic)]
pub mod nri {
    tonic::include_proto!("nri.pkg.api.v1alpha1");
}

/// ttrpc's request and response envelope (`ttrpc/ttrpc.proto`).
#[allow(clippy::all, clippy::pedantic)]
pub mod ttrpc {
    tonic::include_proto!("ttrpc");
}

/// podrun's additions to the CRI (`podrun/v1/podrun.proto`), on the same socket.
#[allow(clippy::all, clippy::pedantic)]
pub mod podrun {
    pub mod v1 {
        tonic::include_proto!("podrun.v1");
    }
}

/// `bytes` fields in JSON as Go (and so crictl) writes them: a base64 string. On input a
/// string that is not valid base64 is taken as plain text, and a list of numbers also works,
/// so hand-written files stay easy.
pub mod go_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
            for i in 0..4 {
                match i <= chunk.len() {
                    true => out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                    false => out.push('='),
                }
            }
        }
        out
    }

    pub fn decode(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(4) {
            return None;
        }
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        let body = s.trim_end_matches('=');
        if s.len() - body.len() > 2 {
            return None;
        }
        for c in body.bytes() {
            acc = (acc << 6) | ALPHABET.iter().position(|&a| a == c)? as u32;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        Some(out)
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(bytes))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(match Form::deserialize(d)? {
            Form::Text(s) => decode(&s).unwrap_or_else(|| s.into_bytes()),
            Form::Bytes(b) => b,
        })
    }
}

/// Connecting a CRI client to a unix socket (podctl, the tests, the benchmarks).
pub mod client {
    use std::path::{Path, PathBuf};

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint};

    use super::cri::image_service_client::ImageServiceClient;
    use super::cri::runtime_service_client::RuntimeServiceClient;

    /// A channel to the CRI server at `socket` (a path, or `unix://` + path).
    pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
        let path: PathBuf = socket
            .to_str()
            .and_then(|s| s.strip_prefix("unix://"))
            .map(PathBuf::from)
            .unwrap_or_else(|| socket.to_owned());
        // The URI is required by tonic but unused: the connector below dials the socket.
        Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
    }

    pub async fn runtime(
        socket: &Path,
    ) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(channel(socket).await?).max_decoding_message_size(64 << 20))
    }

    pub async fn image(
        socket: &Path,
    ) -> Result<ImageServiceClient<Channel>, tonic::transport::Error> {
        Ok(ImageServiceClient::new(channel(socket).await?))
    }

    /// podrun's own image service (pull with progress, import).
    pub async fn podrun_images(
        socket: &Path,
    ) -> Result<super::podrun::v1::images_client::ImagesClient<Channel>, tonic::transport::Error>
    {
        Ok(super::podrun::v1::images_client::ImagesClient::new(
            channel(socket).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::cri;

    /// The first byte of an encoding with exactly one field set is that field's tag:
    /// (number << 3) | wire type. These pin the numbers podrun relies on to upstream's.
    fn tag(msg: impl Message) -> u8 {
        msg.encode_to_vec()[0]
    }

    const LEN: u8 = 2;
    const VARINT: u8 = 0;

    #[test]
    fn key_value_bytes_read_as_go_writes_them_or_as_text() {
        let kv: cri::KeyValue = serde_json::from_str(r#"{"key":"A","value":"aGk="}"#).unwrap();
        assert_eq!(kv.value, b"hi");
        let kv: cri::KeyValue =
            serde_json::from_str(r#"{"key":"A","value":"plain text"}"#).unwrap();
        assert_eq!(kv.value, b"plain text");
        assert_eq!(
            serde_json::to_string(&cri::KeyValue {
                key: "A".into(),
                value: b"hi!?".to_vec()
            })
            .unwrap(),
            r#"{"key":"A","value":"aGkhPw=="}"#
        );
        assert_eq!(
            super::go_bytes::decode(&super::go_bytes::encode(b"\x00\xffabc")).unwrap(),
            b"\x00\xffabc"
        );
    }

    #[test]
    fn wire_numbers_match_upstream() {
        let s = || "x".to_owned();
        let cases: Vec<(&str, u8, u8)> = vec![
            (
                "RunPodSandboxRequest.config",
                tag(cri::RunPodSandboxRequest {
                    config: Some(Default::default()),
                    ..Default::default()
                }),
                1 << 3 | LEN,
            ),
            (
                "RunPodSandboxRequest.runtime_handler",
                tag(cri::RunPodSandboxRequest {
                    runtime_handler: s(),
                    ..Default::default()
                }),
                2 << 3 | LEN,
            ),
            (
                "PodSandboxConfig.hostname",
                tag(cri::PodSandboxConfig {
                    hostname: s(),
                    ..Default::default()
                }),
                2 << 3 | LEN,
            ),
            (
                "PodSandboxConfig.log_directory",
                tag(cri::PodSandboxConfig {
                    log_directory: s(),
                    ..Default::default()
                }),
                3 << 3 | LEN,
            ),
            (
                "PodSandboxConfig.dns_config",
                tag(cri::PodSandboxConfig {
                    dns_config: Some(Default::default()),
                    ..Default::default()
                }),
                4 << 3 | LEN,
            ),
            (
                "PodSandboxConfig.port_mappings",
                tag(cri::PodSandboxConfig {
                    port_mappings: vec![Default::default()],
                    ..Default::default()
                }),
                5 << 3 | LEN,
            ),
            (
                "PodSandboxConfig.linux",
                tag(cri::PodSandboxConfig {
                    linux: Some(Default::default()),
                    ..Default::default()
                }),
                8 << 3 | LEN,
            ),
            (
                "PodSandboxMetadata.attempt",
                tag(cri::PodSandboxMetadata {
                    attempt: 1,
                    ..Default::default()
                }),
                4 << 3 | VARINT,
            ),
            (
                "NamespaceOption.pid",
                tag(cri::NamespaceOption {
                    pid: 1,
                    ..Default::default()
                }),
                2 << 3 | VARINT,
            ),
            (
                "NamespaceOption.ipc",
                tag(cri::NamespaceOption {
                    ipc: 1,
                    ..Default::default()
                }),
                3 << 3 | VARINT,
            ),
            (
                "LinuxPodSandboxConfig.cgroup_parent",
                tag(cri::LinuxPodSandboxConfig {
                    cgroup_parent: s(),
                    ..Default::default()
                }),
                1 << 3 | LEN,
            ),
            (
                "PodSandboxStatus.network",
                tag(cri::PodSandboxStatus {
                    network: Some(Default::default()),
                    ..Default::default()
                }),
                5 << 3 | LEN,
            ),
            (
                "PodSandboxStatus.runtime_handler",
                tag(cri::PodSandboxStatus {
                    runtime_handler: s(),
                    ..Default::default()
                }),
                9 << 3 | LEN,
            ),
            (
                "PodSandboxNetworkStatus.additional_ips",
                tag(cri::PodSandboxNetworkStatus {
                    additional_ips: vec![Default::default()],
                    ..Default::default()
                }),
                2 << 3 | LEN,
            ),
            (
                "PodSandboxFilter.label_selector",
                tag(cri::PodSandboxFilter {
                    label_selector: [(s(), s())].into(),
                    ..Default::default()
                }),
                3 << 3 | LEN,
            ),
            (
                "PortMapping.host_ip",
                tag(cri::PortMapping {
                    host_ip: s(),
                    ..Default::default()
                }),
                4 << 3 | LEN,
            ),
            (
                "RuntimeConfigResponse.linux",
                tag(cri::RuntimeConfigResponse {
                    linux: Some(Default::default()),
                }),
                1 << 3 | LEN,
            ),
        ];
        for (field, got, want) in cases {
            assert_eq!(got, want, "{field}: tag {got:#x}, upstream {want:#x}");
        }
        assert_eq!(cri::CgroupDriver::Cgroupfs as i32, 1);
        assert_eq!(cri::NamespaceMode::Node as i32, 2);
        assert_eq!(cri::PodSandboxState::SandboxNotready as i32, 1);
    }
}
