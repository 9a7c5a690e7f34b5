use super::*;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

const NULL_JSON: &str = r#"{
  "cdiVersion": "0.5.0", "kind": "podrun.test/null",
  "containerEdits": {"env": ["VENDOR=podrun"]},
  "devices": [
    {"name": "zero", "containerEdits": {
      "deviceNodes": [{"path": "/dev/podrun-null", "hostPath": "/dev/null"}],
      "env": ["WHICH=etc"]}},
    {"name": "fifo", "containerEdits": {"deviceNodes": [{"path": "/dev/p", "type": "p"}]}}
  ]
}"#;

const NULL_YAML: &str = "cdiVersion: 0.7.0
kind: podrun.test/null
annotations: {origin: run}
devices:
- name: zero
  containerEdits:
    env: [WHICH=run]
    deviceNodes: [{path: /dev/podrun-null, hostPath: /dev/null, permissions: rw}]
    mounts: [{hostPath: /srv, containerPath: /data, options: [ro, rbind]}]
    hooks: [{hookName: createRuntime, path: /bin/true}]
    additionalGids: [0, 44]
";

#[test]
fn spec_files_are_read_strictly_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.json", NULL_JSON);
    assert_eq!(
        spec::read(&dir.path().join("a.json"))
            .unwrap()
            .devices
            .len(),
        2
    );
    for (text, error) in [
        (
            NULL_JSON.replace("\"env\"", "\"environment\""),
            "unknown field",
        ),
        (NULL_JSON.replace("0.5.0", "0.4.0"), "at least v0.5.0"),
        (NULL_JSON.replace("0.5.0", "9.9.9"), "invalid version"),
        (
            NULL_JSON.replace("podrun.test/null", "podrun.test"),
            "vendor/class",
        ),
        (NULL_JSON.replace("\"fifo\"", "\"zero\""), "multiple device"),
        (
            NULL_JSON.replace("\"type\": \"p\"", "\"type\": \"x\""),
            "type must be",
        ),
        (
            NULL_JSON.replace("/dev/podrun-null", "dev/podrun-null"),
            "not absolute",
        ),
    ] {
        write(dir.path(), "b.json", &text);
        let e = spec::read(&dir.path().join("b.json")).unwrap_err();
        assert!(e.contains(error), "{error}: {e}");
    }
    write(dir.path(), "c.yaml", NULL_YAML);
    assert!(spec::read(&dir.path().join("c.yaml")).is_ok());
    assert!(spec::parse_qualified("vendor.com/gpu=0").is_ok());
    for bad in [
        "gpu=0",
        "vendor.com/gpu",
        "1vendor/gpu=0",
        "vendor/gpu=-0",
        "vendor/g_=0",
    ] {
        assert!(spec::parse_qualified(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_later_dir_wins_and_two_of_a_name_in_one_dir_cancel() {
    let root = tempfile::tempdir().unwrap();
    let (etc, run) = (root.path().join("etc"), root.path().join("run"));
    write(&etc, "null.json", NULL_JSON);
    write(&run, "null.yaml", NULL_YAML);
    write(
        &run,
        "ignored.yml",
        "not read: .yml is not a spec extension",
    );
    let registry = Registry::load(&[etc.clone(), run.clone()]);
    assert!(registry.errors.is_empty(), "{:?}", registry.errors);
    let zero = registry.resolve(&["podrun.test/null=zero".into()]).unwrap();
    let env: Vec<&String> = zero[0]
        .edits
        .iter()
        .flat_map(|e| e.env.iter().flatten())
        .collect();
    assert_eq!(env, ["WHICH=run"], "run's spec, without etc's common edits");
    let fifo = registry.resolve(&["podrun.test/null=fifo".into()]).unwrap();
    assert_eq!(
        fifo[0].edits.len(),
        2,
        "etc's common edits, then the device's"
    );

    write(
        &run,
        "twice.json",
        &NULL_YAML.replace("origin: run", "origin: twice"),
    );
    std::fs::rename(run.join("twice.json"), run.join("twice.yaml")).unwrap();
    let registry = Registry::load(&[etc, run]);
    let err = registry.resolve(&[
        "podrun.test/null=zero".into(),
        "podrun.test/null=gone".into(),
    ]);
    match err {
        Err(Error::InvalidArgument { field, reason }) => {
            assert_eq!(field, "config.CDI_devices");
            assert!(
                reason.contains("podrun.test/null=zero, podrun.test/null=gone"),
                "{reason}"
            );
            assert!(reason.contains("conflicting device"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn edits_reach_the_oci_spec() {
    let root = tempfile::tempdir().unwrap();
    write(root.path(), "null.yaml", NULL_YAML);
    let resolved = Registry::load(&[root.path().into()])
        .resolve(&["podrun.test/null=zero".into()])
        .unwrap();
    let (device, rule) = &resolved[0].devices[0];
    assert_eq!(
        (device.major(), device.minor()),
        (1, 3),
        "from the host's /dev/null"
    );
    assert_eq!(rule.as_ref().unwrap().access().as_deref(), Some("rw"));

    let mut spec: oci::Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 1000, "gid": 1000}, "cwd": "/", "env": ["WHICH=image", "A=1"]},
        "mounts": [{"destination": "/data/sub", "type": "bind", "source": "/x"},
                   {"destination": "/data", "type": "bind", "source": "/old"}],
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
    }))
    .unwrap();
    apply(&mut spec, &resolved).unwrap();
    let v = serde_json::to_value(&spec).unwrap();
    assert_eq!(v["process"]["env"], serde_json::json!(["WHICH=run", "A=1"]));
    assert_eq!(
        v["process"]["user"]["additionalGids"],
        serde_json::json!([44])
    );
    let d = &v["linux"]["devices"][0];
    assert_eq!(
        (d["path"].as_str(), d["uid"].as_u64()),
        (Some("/dev/podrun-null"), Some(1000))
    );
    assert_eq!(v["linux"]["resources"]["devices"][1]["allow"], true);
    let dests: Vec<&str> = v["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["destination"].as_str().unwrap())
        .collect();
    assert_eq!(
        dests,
        ["/data", "/data/sub"],
        "replaced, then parents first"
    );
    assert_eq!(v["mounts"][0]["source"], "/srv");
    assert_eq!(v["hooks"]["createRuntime"][0]["path"], "/bin/true");
}

#[test]
fn requested_devices_come_from_the_field_and_the_annotations() {
    let config = cri::ContainerConfig {
        cdi_devices: vec![cri::CdiDevice {
            name: "v.com/c=a".into(),
        }],
        annotations: [
            (
                "cdi.k8s.io/plugin".to_owned(),
                "v.com/c=b,v.com/c=a".to_owned(),
            ),
            ("other".to_owned(), "v.com/c=z".to_owned()),
        ]
        .into(),
        ..Default::default()
    };
    assert_eq!(requested(&config).unwrap(), ["v.com/c=a", "v.com/c=b"]);
    let bad = cri::ContainerConfig {
        annotations: [("cdi.k8s.io/x".to_owned(), "not-qualified".to_owned())].into(),
        ..Default::default()
    };
    assert!(matches!(
        requested(&bad),
        Err(Error::InvalidArgument {
            field: "config.annotations",
            ..
        })
    ));
}
