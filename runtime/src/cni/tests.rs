use std::sync::Mutex;

use super::exec::{BoxFuture, Output};
use super::*;

/// Records every call and answers with a canned result per plugin type.
struct Recorder {
    calls: Mutex<Vec<(String, String, Value)>>,
    fail: Option<&'static str>,
}

impl Exec for Recorder {
    fn run<'a>(
        &'a self,
        plugin: &'a str,
        env: &'a [(String, String)],
        stdin: Vec<u8>,
    ) -> BoxFuture<'a, Result<Output>> {
        Box::pin(async move {
            let command = env
                .iter()
                .find(|(k, _)| k == "CNI_COMMAND")
                .unwrap()
                .1
                .clone();
            self.calls.lock().unwrap().push((
                command,
                plugin.to_owned(),
                serde_json::from_slice(&stdin).unwrap(),
            ));
            if self.fail == Some(plugin) {
                let err = json!({"cniVersion": "1.0.0", "code": 7, "msg": "no luck", "details": "really"});
                return Ok(Output {
                    success: false,
                    status: "exit 1".into(),
                    stdout: err.to_string().into_bytes(),
                    stderr: vec![],
                });
            }
            let result = json!({"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}, {"address": format!("10.0.0.{}/24", plugin.len())}]});
            Ok(Output {
                success: true,
                status: "exit 0".into(),
                stdout: result.to_string().into_bytes(),
                stderr: vec![],
            })
        })
    }
}

fn attachment() -> Attachment {
    let list = br#"{"cniVersion":"1.0.0","name":"podnet","plugins":[
        {"type":"bridge","bridge":"br0"},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    let mut capabilities = Map::new();
    capabilities.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
    );
    capabilities.insert("dns".into(), json!({"servers": ["10.0.0.10"]}));
    Attachment {
        network: Network::parse(list, Path::new("/etc/cni/net.d/10-pod.conflist")).unwrap(),
        container_id: "abc".into(),
        netns: "/run/netns/x".into(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAME".into(), "web".into()),
        ],
        capabilities,
        result: None,
    }
}

#[tokio::test]
async fn add_chains_prev_result_and_gives_capabilities_only_to_plugins_that_ask() {
    let rec = Recorder {
        calls: Mutex::new(vec![]),
        fail: None,
    };
    let mut att = attachment();
    att.add(&rec).await.unwrap();
    let calls = rec.calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    let (cmd, plugin, bridge) = &calls[0];
    assert_eq!((cmd.as_str(), plugin.as_str()), ("ADD", "bridge"));
    assert_eq!(bridge["name"], "podnet");
    assert_eq!(bridge["cniVersion"], "1.0.0");
    assert!(bridge.get("prevResult").is_none() && bridge.get("runtimeConfig").is_none());
    let portmap = &calls[1].2;
    assert_eq!(portmap["prevResult"]["ips"][1]["address"], "10.0.0.6/24");
    assert_eq!(
        portmap["runtimeConfig"]["portMappings"][0]["hostPort"],
        8080
    );
    assert!(portmap["runtimeConfig"].get("dns").is_none());
    // The primary IP is the IPv4 one, even when the result lists IPv6 first.
    assert_eq!(att.ips()[0].to_string(), "10.0.0.7");
}

#[tokio::test]
async fn gc_names_the_valid_attachments_to_every_plugin_only_from_spec_1_1() {
    let rec = Recorder {
        calls: Mutex::new(vec![]),
        fail: None,
    };
    let valid = [("abc".to_owned(), "eth0".to_owned())];
    let list = |version: &str, extra: &str| {
        let text = format!(
            r#"{{"cniVersion":"{version}","name":"podnet",{extra}"plugins":[
            {{"type":"bridge"}},{{"type":"portmap"}}]}}"#
        );
        Network::parse(text.as_bytes(), Path::new("/x.conflist")).unwrap()
    };
    assert!(!list("1.0.0", "").gc(&valid, &rec).await.unwrap());
    let off = list("1.1.0", r#""disableGC":true,"#);
    assert!(!off.gc(&valid, &rec).await.unwrap());
    assert!(
        rec.calls.lock().unwrap().is_empty(),
        "no GC before 1.1.0 or when disabled"
    );

    assert!(list("1.1.0", "").gc(&valid, &rec).await.unwrap());
    let calls = rec.calls.lock().unwrap();
    let plugins: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(plugins, ["bridge", "portmap"]);
    for (command, _, conf) in calls.iter() {
        assert_eq!(command, "GC");
        assert_eq!(conf["name"], "podnet");
        assert_eq!(
            conf["cni.dev/valid-attachments"],
            json!([{"containerID": "abc", "ifname": "eth0"}])
        );
    }
}

#[tokio::test]
async fn del_runs_in_reverse_with_the_cached_result_and_tries_every_plugin() {
    let rec = Recorder {
        calls: Mutex::new(vec![]),
        fail: Some("portmap"),
    };
    let mut att = attachment();
    att.result = Some(json!({"ips": [{"address": "10.0.0.9/24"}]}));
    let err = att.del(&rec).await.unwrap_err().to_string();
    assert!(
        err.contains("portmap") && err.contains("no luck: really"),
        "{err}"
    );
    let calls = rec.calls.lock().unwrap();
    let order: Vec<&str> = calls.iter().map(|c| c.1.as_str()).collect();
    assert_eq!(order, ["portmap", "bridge"]);
    assert!(calls
        .iter()
        .all(|c| c.0 == "DEL" && c.2["prevResult"]["ips"][0]["address"] == "10.0.0.9/24"));
}

#[tokio::test]
async fn a_failing_plugin_stops_add_with_its_message() {
    let rec = Recorder {
        calls: Mutex::new(vec![]),
        fail: Some("bridge"),
    };
    let mut att = attachment();
    let err = att.add(&rec).await.unwrap_err().to_string();
    assert!(
        err.contains("\"bridge\"") && err.contains("podnet") && err.contains("no luck"),
        "{err}"
    );
    assert_eq!(rec.calls.lock().unwrap().len(), 1);
    assert!(att.result.is_none());
}

#[test]
fn first_config_by_name_wins_and_single_conf_files_become_lists() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("20-b.conflist"),
        r#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("10-a.conf"),
        r#"{"cniVersion":"0.4.0","name":"a","type":"ptp"}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("05-broken.conf"), "{").unwrap();
    std::fs::write(dir.path().join("00-readme.txt"), "ignored").unwrap();
    let net = Network::load_first(dir.path()).unwrap().unwrap();
    assert_eq!(
        (net.name.as_str(), net.cni_version.as_str()),
        ("a", "0.4.0")
    );
    assert_eq!(net.plugins[0]["type"], "ptp");
    assert!(Network::load_first(&dir.path().join("missing"))
        .unwrap()
        .is_none());
}

#[test]
fn configs_without_a_plugin_type_are_rejected() {
    let err = Network::parse(
        br#"{"name":"x","plugins":[{"bridge":"b"}]}"#,
        Path::new("x.conflist"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("without \"type\""), "{err}");
}

#[test]
fn only_addresses_inside_the_pod_are_pod_ips() {
    let mut att = attachment();
    att.result = Some(json!({
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.0.0.1/24", "interface": 0}, {"address": "10.0.0.7/24", "interface": 1}]
    }));
    assert_eq!(
        att.ips(),
        vec!["10.0.0.7".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[tokio::test]
async fn del_gets_no_prev_result_before_spec_0_4_0() {
    let rec = Recorder {
        calls: Mutex::new(vec![]),
        fail: None,
    };
    let mut att = attachment();
    att.network.cni_version = "0.3.1".into();
    att.result = Some(json!({"ips": []}));
    att.del(&rec).await.unwrap();
    assert!(rec
        .calls
        .lock()
        .unwrap()
        .iter()
        .all(|c| c.2.get("prevResult").is_none()));
    assert!(
        version_below("0.3.1", (0, 4))
            && !version_below("1.0.0", (0, 4))
            && !version_below("0.4.0", (0, 4))
    );
}

/// Any conflist and any ADD result: no panic; accepted networks name plugin binaries only
/// inside the plugin directories.
#[test]
fn fuzz_conflists_and_results() {
    let conflist = br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","bridge":"b0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    let result = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"b0"},{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"interface":1,"address":"10.0.0.2/24","gateway":"10.0.0.1"},{"address":"fd00::2/64"}],"dns":{}}"#;
    let tokens: &[&[u8]] = &[
        b"\"type\":",
        b"\"../\"",
        b"\"interface\":",
        b"4294967296",
        b"-1",
        b"\"address\":\"",
        b"::",
    ];
    podrun_fuzzkit::fuzz("cni", &[conflist, result], tokens, |input| {
        if let Ok(net) = Network::parse(input, std::path::Path::new("/x.conflist")) {
            for p in &net.plugins {
                let t = p["type"].as_str().unwrap();
                assert!(!t.contains('/') && t != ".." && !t.is_empty(), "{t:?}");
            }
        }
        if let Ok(value) = serde_json::from_slice::<Value>(input) {
            let att = Attachment {
                network: Network {
                    name: "n".into(),
                    cni_version: "1.0.0".into(),
                    plugins: vec![],
                    source: "x".into(),
                    disable_gc: false,
                },
                container_id: "c".into(),
                netns: "/run/netns/x".into(),
                ifname: "eth0".into(),
                args: vec![],
                capabilities: Default::default(),
                result: Some(value),
            };
            let ips = att.ips();
            if let Some(first_v6) = ips.iter().position(|ip| ip.is_ipv6()) {
                assert!(
                    ips[first_v6..].iter().all(|ip| ip.is_ipv6()),
                    "IPv4 first: {ips:?}"
                );
            }
        }
    });
}
