//! Compiles our transcription of the CRI proto with protox (pure Rust, no protoc) and
//! generates tonic client and server code. Every message also derives serde with
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
    Ok(())
}
