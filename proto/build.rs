//! Compiles our transcription of the CRI proto with protox (pure Rust, no protoc) and
//! generates tonic client and server code; and our transcription of NRI's messages and
//! ttrpc's envelope, as plain prost messages. Every message also derives serde with
//! snake_case field names, so the JSON/YAML files crictl reads map onto them directly.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["cri/runtime/v1/api.proto", "podrun/v1/podrun.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .message_attribute(".", "#[serde(default)]")
        .field_attribute(
            "runtime.v1.KeyValue.value",
            "#[serde(with = \"crate::go_bytes\")]",
        )
        .compile_fds(fds)?;
    // NRI and ttrpc's envelope: messages only (podrun speaks ttrpc itself, not tonic).
    let nri = ["nri/v1alpha1/api.proto", "ttrpc/ttrpc.proto"];
    for proto in nri {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile(nri, ["."])?)?;
    Ok(())
}
