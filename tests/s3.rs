//! The s3 capability through a real plugin, on both backends: a local
//! directory and the S3 test server (moto) that the test command starts.

mod common;

use common::*;

/// A fresh bucket on the S3 test server, optionally versioned.
async fn bucket(versioned: bool) -> String {
    let name = format!("drhost-{}", unique()).replace('_', "-");
    let c = s3_admin();
    c.create_bucket()
        .bucket(&name)
        .send()
        .await
        .expect("create bucket");
    if versioned {
        c.put_bucket_versioning()
            .bucket(&name)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .expect("enable versioning");
    }
    name
}

fn s3_alias(alias: &str, bucket: &str, prefix: &str, access: &str) -> String {
    format!(
        "[s3.{alias}]\nbucket = \"{bucket}\"\nprefix = \"{prefix}\"\naccess = {access}\nendpoint = \"{}\"\nregion = \"us-east-1\"\npath-style = true\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n",
        s3_endpoint()
    )
}

fn local_alias(alias: &str, path: &str, access: &str) -> String {
    format!("[s3.{alias}]\npath = \"{path}\"\naccess = {access}\n")
}

const ALL: &str = "[\"read\", \"list\", \"write\", \"delete\"]";

/// The same sequence of operations on whatever backend `alias` "b" is.
async fn exercise(policy: &str, dir: &std::path::Path) {
    let caps = caps(policy, dir).await;
    let put = ok(
        &caps,
        "s3.put",
        &[("alias", "b"), ("key", "docs/a.txt"), ("body", "hello")],
    )
    .await;
    assert_eq!(get(&put, "key"), Some("docs/a.txt"));
    assert_eq!(get(&put, "size"), Some("5"));
    let head = ok(&caps, "s3.head", &[("alias", "b"), ("key", "docs/a.txt")]).await;
    assert_eq!(get(&head, "size"), Some("5"));
    let missing = ok(&caps, "s3.head", &[("alias", "b"), ("key", "docs/none")]).await;
    assert_eq!(get(&missing, "missing"), Some("docs/none"));
    let body = ok(&caps, "s3.get", &[("alias", "b"), ("key", "docs/a.txt")]).await;
    assert_eq!(get(&body, "body"), Some("hello"));
    let sum = ok(
        &caps,
        "s3.checksum",
        &[("alias", "b"), ("key", "docs/a.txt")],
    )
    .await;
    assert_eq!(
        get(&sum, "sha256"),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    for i in 0..5 {
        ok(
            &caps,
            "s3.put",
            &[
                ("alias", "b"),
                ("key", &format!("docs/p/{i}")),
                ("body", "x"),
            ],
        )
        .await;
    }
    // Pagination: 2 per page over 5 keys.
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut args = vec![("alias", "b"), ("prefix", "docs/p/"), ("max", "2")];
        if let Some(t) = &token {
            args.push(("token", t));
        }
        let page = ok(&caps, "s3.list", &args).await;
        keys.extend(all(&page, "key").into_iter().map(str::to_string));
        match get(&page, "next-token") {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(
        keys,
        ["docs/p/0", "docs/p/1", "docs/p/2", "docs/p/3", "docs/p/4"]
    );
    let copy = ok(
        &caps,
        "s3.copy",
        &[
            ("alias", "b"),
            ("key", "docs/a.txt"),
            ("dst-alias", "b"),
            ("dst-key", "docs/copy.txt"),
        ],
    )
    .await;
    assert_eq!(get(&copy, "size"), Some("5"));
    ok(
        &caps,
        "s3.delete",
        &[("alias", "b"), ("key", "docs/copy.txt")],
    )
    .await;
    let gone = ok(
        &caps,
        "s3.head",
        &[("alias", "b"), ("key", "docs/copy.txt")],
    )
    .await;
    assert_eq!(get(&gone, "missing"), Some("docs/copy.txt"));
    let nf = failed(&caps, "s3.get", &[("alias", "b"), ("key", "docs/none")]).await;
    assert!(nf.contains("not found"), "{nf}");
}

#[tokio::test]
async fn every_operation_works_on_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&local_alias("b", "bucket", ALL), dir.path()).await;
    assert!(dir.path().join("bucket/docs/a.txt").exists());
}

#[tokio::test]
async fn every_operation_works_on_the_s3_server() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(false).await;
    exercise(&s3_alias("b", &b, "tenant/", ALL), dir.path()).await;
    // The prefix is applied on the server.
    let listed = s3_admin()
        .list_objects_v2()
        .bucket(&b)
        .send()
        .await
        .unwrap();
    assert!(
        listed
            .contents()
            .iter()
            .all(|o| o.key().unwrap().starts_with("tenant/docs/"))
    );
}

#[tokio::test]
async fn each_missing_access_mode_is_denied_with_the_grant_that_would_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ro")).unwrap();
    std::fs::write(dir.path().join("ro/a"), "x").unwrap();
    let caps = caps(&local_alias("b", "ro", "[\"read\"]"), dir.path()).await;
    for (step, args, mode) in [
        (
            "s3.put",
            vec![("alias", "b"), ("key", "n"), ("body", "y")],
            "write",
        ),
        ("s3.delete", vec![("alias", "b"), ("key", "a")], "delete"),
        ("s3.list", vec![("alias", "b")], "list"),
        ("s3.list-versions", vec![("alias", "b")], "list"),
    ] {
        let err = failed(&caps, step, &args).await;
        assert!(err.starts_with("denied:"), "{step}: {err}");
        assert!(
            err.contains(&format!("add \"{mode}\" to its access list")),
            "{step}: {err}"
        );
    }
    let caps2 = caps_with_write_only(dir.path()).await;
    let err = failed(&caps2, "s3.get", &[("alias", "b"), ("key", "a")]).await;
    assert!(err.contains("needs Read access"), "{err}");
    // Nothing changed on disk.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ro/a")).unwrap(),
        "x"
    );
    assert!(!dir.path().join("ro/n").exists());
    flush(&caps);
    flush(&caps2);
    let denials = audit_records(dir.path())
        .into_iter()
        .filter(|r| r["decision"] == "deny")
        .count();
    assert_eq!(denials, 5);
}

async fn caps_with_write_only(dir: &std::path::Path) -> std::sync::Arc<drhost::caps::Caps> {
    caps(&local_alias("b", "ro", "[\"write\"]"), dir).await
}

#[tokio::test]
async fn keys_cannot_escape_the_prefix_on_either_backend() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secret")).unwrap();
    std::fs::write(dir.path().join("secret/key"), "top secret").unwrap();
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    // A symlink inside the bucket pointing out of it.
    std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("bucket/link")).unwrap();
    let b = bucket(false).await;
    let policy = format!(
        "{}{}",
        local_alias("b", "bucket", ALL),
        s3_alias("r", &b, "tenant/", ALL)
    );
    let caps = caps(&policy, dir.path()).await;
    for alias in ["b", "r"] {
        for key in [
            "../secret/key",
            "/etc/passwd",
            "a/../../secret/key",
            "%2e%2e/secret/key",
            "..%2Fsecret%2Fkey",
            "\u{FF0E}\u{FF0E}/secret/key",
            "a\u{2215}..\u{2215}secret",
            "a\\..\\secret",
        ] {
            let err = failed(&caps, "s3.get", &[("alias", alias), ("key", key)]).await;
            assert!(err.starts_with("invalid:"), "{alias} {key:?}: {err}");
            let err = failed(
                &caps,
                "s3.put",
                &[("alias", alias), ("key", key), ("body", "x")],
            )
            .await;
            assert!(err.starts_with("invalid:"), "{alias} {key:?}: {err}");
        }
    }
    // The symlink leads out of the bucket: cap-std refuses to follow it.
    let err = failed(&caps, "s3.get", &[("alias", "b"), ("key", "link/key")]).await;
    assert!(!err.contains("top secret"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret/key")).unwrap(),
        "top secret"
    );
}

#[tokio::test]
async fn objects_over_the_guest_cap_are_refused_and_copy_still_works() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    std::fs::write(dir.path().join("bucket/big"), vec![7u8; 2 << 20]).unwrap();
    let policy = format!(
        "[limits]\nmax-guest-bytes = \"1 MiB\"\n{}",
        local_alias("b", "bucket", ALL)
    );
    let caps = caps(&policy, dir.path()).await;
    let err = failed(&caps, "s3.get", &[("alias", "b"), ("key", "big")]).await;
    assert!(err.starts_with("too large:"), "{err}");
    assert!(err.contains("max-guest-bytes"), "{err}");
    ok(
        &caps,
        "s3.copy",
        &[
            ("alias", "b"),
            ("key", "big"),
            ("dst-alias", "b"),
            ("dst-key", "big2"),
        ],
    )
    .await;
    assert_eq!(
        std::fs::read(dir.path().join("bucket/big2")).unwrap().len(),
        2 << 20
    );
}

#[tokio::test]
async fn copy_streams_between_aliases_on_different_backends() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("local")).unwrap();
    // Larger than one multipart part, to take the streaming path.
    let body: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("local/blob"), &body).unwrap();
    let b = bucket(false).await;
    let policy = format!(
        "{}{}",
        local_alias("l", "local", "[\"read\", \"write\"]"),
        s3_alias("r", &b, "", ALL)
    );
    let caps = caps(&policy, dir.path()).await;
    ok(
        &caps,
        "s3.copy",
        &[
            ("alias", "l"),
            ("key", "blob"),
            ("dst-alias", "r"),
            ("dst-key", "blob"),
        ],
    )
    .await;
    let remote = ok(&caps, "s3.checksum", &[("alias", "r"), ("key", "blob")]).await;
    let local = ok(&caps, "s3.checksum", &[("alias", "l"), ("key", "blob")]).await;
    assert_eq!(get(&remote, "sha256"), get(&local, "sha256"));
    // And back the other way.
    ok(
        &caps,
        "s3.copy",
        &[
            ("alias", "r"),
            ("key", "blob"),
            ("dst-alias", "l"),
            ("dst-key", "back"),
        ],
    )
    .await;
    assert_eq!(std::fs::read(dir.path().join("local/back")).unwrap(), body);
}

#[tokio::test]
async fn versions_can_be_listed_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = bucket(true).await;
    let caps = caps(&s3_alias("v", &b, "", ALL), dir.path()).await;
    ok(
        &caps,
        "s3.put",
        &[("alias", "v"), ("key", "cfg.json"), ("body", "one")],
    )
    .await;
    ok(
        &caps,
        "s3.put",
        &[("alias", "v"), ("key", "cfg.json"), ("body", "two")],
    )
    .await;
    ok(&caps, "s3.delete", &[("alias", "v"), ("key", "cfg.json")]).await;
    let versions = ok(
        &caps,
        "s3.list-versions",
        &[("alias", "v"), ("prefix", "cfg")],
    )
    .await;
    let lines = all(&versions, "version");
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("deleted=true") && l.contains("latest=true"))
    );
    let oldest = lines
        .iter()
        .find(|l| l.contains(" 3 ") && l.contains("latest=false"))
        .expect("a 3-byte old version");
    let version_id = oldest.split(' ').nth(1).unwrap();
    let body = ok(
        &caps,
        "s3.get-version",
        &[("alias", "v"), ("key", "cfg.json"), ("version", version_id)],
    )
    .await;
    let b = get(&body, "body").unwrap();
    assert!(b == "one" || b == "two", "{b}");
}

/// The proxy from tests/common in front of the S3 server.
async fn vanishing_proxy(limit: u64) -> String {
    let upstream = s3_endpoint().trim_start_matches("http://").to_string();
    format!("http://{}", common::vanishing_proxy(upstream, limit).await)
}

fn proxied_alias(alias: &str, bucket: &str, endpoint: &str, access: &str) -> String {
    format!(
        "[s3.{alias}]\nbucket = \"{bucket}\"\naccess = {access}\nendpoint = \"{endpoint}\"\npath-style = true\naccess-key-id = \"test\"\nsecret-access-key = \"test\"\n"
    )
}

#[tokio::test]
async fn an_upload_cut_off_mid_transfer_leaves_no_object() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("local")).unwrap();
    std::fs::write(dir.path().join("local/blob"), vec![3u8; 20 << 20]).unwrap();
    let b = bucket(false).await;
    let proxy = vanishing_proxy(12 << 20).await;
    let policy = format!(
        "{}{}",
        local_alias("l", "local", "[\"read\"]"),
        proxied_alias("r", &b, &proxy, "[\"write\", \"read\"]")
    );
    let caps = caps(&policy, dir.path()).await;
    let err = failed(
        &caps,
        "s3.copy",
        &[
            ("alias", "l"),
            ("key", "blob"),
            ("dst-alias", "r"),
            ("dst-key", "blob"),
        ],
    )
    .await;
    assert!(err.starts_with("unavailable:"), "{err}");
    let head = s3_admin().head_object().bucket(&b).key("blob").send().await;
    assert!(head.is_err(), "a partial upload became visible");
}

#[tokio::test]
async fn a_download_cut_off_mid_transfer_leaves_no_local_object() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("local")).unwrap();
    let b = bucket(false).await;
    s3_admin()
        .put_object()
        .bucket(&b)
        .key("blob")
        .body(vec![5u8; 20 << 20].into())
        .send()
        .await
        .unwrap();
    let proxy = vanishing_proxy(4 << 20).await;
    let policy = format!(
        "{}{}",
        local_alias("l", "local", "[\"write\", \"list\"]"),
        proxied_alias("r", &b, &proxy, "[\"read\"]")
    );
    let caps = caps(&policy, dir.path()).await;
    let err = failed(
        &caps,
        "s3.copy",
        &[
            ("alias", "r"),
            ("key", "blob"),
            ("dst-alias", "l"),
            ("dst-key", "blob"),
        ],
    )
    .await;
    assert!(err.starts_with("unavailable:"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("local"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "partial files left behind: {left:?}");
}
