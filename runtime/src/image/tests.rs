use super::*;

fn image(id: &str, layers: &[&str]) -> Image {
    Image {
        id: format!("sha256:{id}"),
        repo_tags: vec![],
        repo_digests: vec![],
        layers: layers.iter().map(|l| layer(l)).collect(),
        size: 10,
        config: serde_json::json!({"User": "1000:1000"}),
    }
}

/// The chain id named by one hex digit.
fn layer(digit: &str) -> String {
    format!("sha256:{}", digit.repeat(64))
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(dir.path(), PullOptions::default()).unwrap();
    (dir, s)
}

#[test]
fn tags_move_between_images_and_lookups_accept_every_form() {
    let (_d, s) = store();
    let a = "a".repeat(64);
    s.add(
        image(&a, &["1"]),
        Some("docker.io/library/busybox:latest".into()),
        "docker.io/library/busybox@sha256:m1".into(),
    )
    .unwrap();
    assert_eq!(s.find("busybox").unwrap().id, format!("sha256:{a}"));
    assert_eq!(s.find(&a[..12]).unwrap().id, format!("sha256:{a}"));
    assert_eq!(
        s.find(&format!("sha256:{a}")).unwrap().user(),
        (Some(1000), String::new())
    );
    assert!(s.find("docker.io/library/busybox@sha256:m1").is_some() || s.find("nothing").is_none());
    let b = "b".repeat(64);
    s.add(
        image(&b, &["1", "2"]),
        Some("docker.io/library/busybox:latest".into()),
        "docker.io/library/busybox@sha256:m2".into(),
    )
    .unwrap();
    assert!(
        s.find(&a).unwrap().repo_tags.is_empty(),
        "the tag moved to the new image"
    );
    assert_eq!(s.find("busybox:latest").unwrap().id, format!("sha256:{b}"));
    // The index survives a reopen.
    let reopened = ImageStore::open(_d.path(), PullOptions::default()).unwrap();
    assert_eq!(reopened.list().len(), 2);
}

#[test]
fn removing_a_tag_keeps_the_others_and_the_last_name_takes_the_image_and_unused_layers() {
    let (_d, s) = store();
    let a = "a".repeat(64);
    for l in ["1", "2"] {
        std::fs::create_dir_all(s.layer_path(&layer(l)).unwrap()).unwrap();
    }
    s.add(
        image(&a, &["1", "2"]),
        Some("example.com/app:1".into()),
        "example.com/app@sha256:m".into(),
    )
    .unwrap();
    s.add(
        image(&a, &["1", "2"]),
        Some("example.com/app:2".into()),
        "example.com/app@sha256:m".into(),
    )
    .unwrap();
    let b = "b".repeat(64);
    s.add(
        image(&b, &["1"]),
        Some("example.com/base:1".into()),
        "example.com/base@sha256:n".into(),
    )
    .unwrap();
    s.remove("example.com/app:1", |_| vec![]).unwrap();
    assert_eq!(
        s.find(&a).unwrap().repo_tags,
        vec!["example.com/app:2".to_owned()]
    );
    s.remove("example.com/app:2", |_| vec![]).unwrap();
    assert!(s.find(&a).is_none());
    assert!(
        s.layer_path(&layer("1")).unwrap().exists(),
        "a layer another image uses stays"
    );
    assert!(!s.layer_path(&layer("2")).unwrap().exists());
    s.remove("example.com/app:2", |_| vec![])
        .expect("removing what is gone is fine");
    s.remove(&b, |_| vec![]).unwrap();
    assert!(s.list().is_empty() && !s.layer_path(&layer("1")).unwrap().exists());
}

#[test]
fn no_id_from_an_image_names_a_path_outside_the_store() {
    let (_d, s) = store();
    for bad in ["sha256:/etc", "sha256:../../etc", "/etc", "sha256:"] {
        assert!(s.layer_path(bad).is_err(), "{bad}");
        assert!(s.blob_path(bad).is_err(), "{bad}");
    }
    let good = s.layer_path(&layer("a")).unwrap();
    assert!(good.starts_with(_d.path().join("images/layers")));
}

#[test]
fn an_image_containers_use_is_not_removed_but_its_extra_tags_are() {
    let (_d, s) = store();
    let a = "a".repeat(64);
    std::fs::create_dir_all(s.layer_path(&layer("1")).unwrap()).unwrap();
    for tag in ["example.com/app:1", "example.com/app:2"] {
        s.add(
            image(&a, &["1"]),
            Some(tag.into()),
            "example.com/app@sha256:m".into(),
        )
        .unwrap();
    }
    let users = |id: &str| match id == format!("sha256:{}", "a".repeat(64)) {
        true => vec!["c1".to_owned()],
        false => vec![],
    };
    s.remove("example.com/app:1", users)
        .expect("another tag keeps the image");
    let err = s.remove("example.com/app:2", users).unwrap_err();
    assert_eq!(err.kind(), crate::error::Kind::FailedPrecondition);
    assert!(err.to_string().contains("c1"), "{err}");
    assert!(s.find(&a).is_some() && s.layer_path(&layer("1")).unwrap().exists());
    s.remove(&a, |_| vec![]).unwrap();
    assert!(s.find(&a).is_none() && !s.layer_path(&layer("1")).unwrap().exists());
}
