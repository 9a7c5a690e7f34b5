use super::*;
use ::oci_spec::runtime as oci;

fn spec() -> oci::Spec {
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["sh"], "env": ["A=1", "B=2"]},
        "mounts": [{"destination": "/data", "type": "bind", "source": "/srv"}],
        "annotations": {"keep": "1", "drop": "2"},
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
    }))
    .unwrap()
}

#[test]
fn adjustments_add_replace_and_remove_in_plugin_order() {
    let first = api::ContainerAdjustment {
        annotations: [
            ("-drop".to_owned(), String::new()),
            ("new".to_owned(), "x".to_owned()),
        ]
        .into(),
        env: vec![
            api::KeyValue {
                key: "-B".into(),
                value: String::new(),
            },
            api::KeyValue {
                key: "A".into(),
                value: "first".into(),
            },
        ],
        mounts: vec![api::Mount {
            destination: "-/data".into(),
            ..Default::default()
        }],
        args: vec!["".into(), "/init".into()],
        linux: Some(api::LinuxContainerAdjustment {
            devices: vec![api::LinuxDevice {
                path: "/dev/nri".into(),
                r#type: "c".into(),
                major: 1,
                minor: 3,
                ..Default::default()
            }],
            oom_score_adj: Some(api::OptionalInt { value: -999 }),
            resources: Some(api::LinuxResources {
                cpu: Some(api::LinuxCpu {
                    shares: Some(api::OptionalUInt64 { value: 512 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let second = api::ContainerAdjustment {
        env: vec![api::KeyValue {
            key: "C".into(),
            value: "second".into(),
        }],
        hooks: Some(api::Hooks {
            poststart: vec![api::Hook {
                path: "/bin/true".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut s = spec();
    let both = [
        ("10-a".to_owned(), first.clone()),
        ("20-b".to_owned(), second),
    ];
    adjust(&mut s, &both, -500).unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v["process"]["env"],
        serde_json::json!(["A=first", "C=second"]),
        "B removed"
    );
    assert_eq!(v["hooks"]["poststart"][0]["path"], "/bin/true");
    // Two plugins setting one thing: the second is refused, naming both.
    let clash = api::ContainerAdjustment {
        env: vec![api::KeyValue {
            key: "A".into(),
            value: "other".into(),
        }],
        ..Default::default()
    };
    let clashing = [("10-a".to_owned(), first), ("20-b".to_owned(), clash)];
    match adjust(&mut spec(), &clashing, -500) {
        Err(Error::FailedPrecondition(m)) => {
            assert!(m.contains("10-a and 20-b") && m.contains("env A"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        v["process"]["args"],
        serde_json::json!(["/init"]),
        "the override marker is dropped"
    );
    assert_eq!(
        v["process"]["oomScoreAdj"], -500,
        "clamped to what podrund may set"
    );
    assert_eq!(
        v["annotations"],
        serde_json::json!({"keep": "1", "new": "x"})
    );
    assert_eq!(v["mounts"], serde_json::json!([]));
    assert_eq!(v["linux"]["devices"][0]["path"], "/dev/nri");
    assert_eq!(
        v["linux"]["resources"]["devices"][1],
        serde_json::json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"})
    );
    assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 512);
}

#[test]
fn what_podrun_does_not_apply_is_refused_naming_plugin_and_field() {
    let cases = [
        api::ContainerAdjustment {
            cdi_devices: vec![api::CdiDevice {
                name: "v/c=x".into(),
            }],
            ..Default::default()
        },
        api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                cgroups_path: "/elsewhere".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                scheduler: Some(Vec::new()),
                ..Default::default()
            }),
            ..Default::default()
        },
        api::ContainerAdjustment {
            linux: Some(api::LinuxContainerAdjustment {
                resources: Some(api::LinuxResources {
                    hugepage_limits: vec![Vec::new()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    for a in cases {
        match adjust(&mut spec(), &[("10-x".into(), a.clone())], -1000) {
            Err(Error::FailedPrecondition(m)) => assert!(m.contains("10-x"), "{m}"),
            other => panic!("{a:?}: {other:?}"),
        }
    }
}

#[test]
fn plugin_names_and_indexes_are_checked() {
    let r = |name: &str, idx: &str| api::RegisterPluginRequest {
        plugin_name: name.into(),
        plugin_idx: idx.into(),
        ..Default::default()
    };
    assert!(check_name(&r("logger.v1+x_y-z", "05")).is_ok());
    for (name, idx) in [
        ("", "10"),
        ("a/b", "10"),
        ("ok", "1"),
        ("ok", "1a"),
        ("ok", "100"),
    ] {
        assert!(check_name(&r(name, idx)).is_err(), "{name} {idx}");
    }
}
