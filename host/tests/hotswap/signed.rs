//! Signed deploys: a host with `host.trusted_keys` runs only deployed
//! versions signed by one of them. Forged uploads — written straight into
//! the Object Store and KV, unsigned, signed by another key, or with a
//! signature copied from another component — are refused with a log line
//! and a metric while the running version keeps running; `plugin deploy
//! --key` and `plugin sign` + `plugin deploy` are accepted.

use super::*;
use jetplug::hotswap::fleet::Fleet;
use jetplug::hotswap::signing;

/// The public key `plugin keygen` printed (its last line).
fn keygen(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, String)> {
    let key = dir.join(name);
    let out = jetplug(&["plugin", "keygen", "--out", key.to_str().context("utf-8")?])?;
    assert!(out.status.success(), "{}", text(&out));
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    Ok((key, public))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_versions_signed_by_a_trusted_key_run() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (key, public) = keygen(dir.path(), "deploy.key")?;
    let (other_key, _) = keygen(dir.path(), "other.key")?;
    let admin = admin_addr()?;
    let conf = write_config(
        dir.path(),
        &nats.url(),
        &admin,
        &format!("watch_plugins = false\ntrusted_keys = [\"{public}\"]"),
    )?;
    let conf_s = conf.to_str().context("utf-8 path")?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    let v2_bytes = std::fs::read(plugins::TEST_V2)?;
    let v2 = content_hash(&v2_bytes);
    let host = host_process(&conf, admin.clone(), dir.path().join("host.log"))?;
    host.ready().await?;
    runs(&host, &v1).await?;

    // The CLI refuses to deploy what these hosts would refuse.
    let out = deploy(conf_s, plugins::TEST_V2, &[])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("would be refused"), "{}", text(&out));

    // Forged uploads, straight into the buckets.
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let fleet = Fleet::open(&js, "jetplug-plugins").await?;
    let other = signing::load_key(&other_key).map_err(anyhow::Error::msg)?;
    let trusted = signing::load_key(&key).map_err(anyhow::Error::msg)?;
    let forgeries = [
        ("unsigned", None),
        ("bad-signature", Some(signing::sign(&other, &v2))),
        // A trusted signature, but of another component.
        (
            "bad-signature",
            Some(signing::Signature {
                hash: v2.clone(),
                ..signing::sign(&trusted, &v1)
            }),
        ),
    ];
    for (i, (kind, sig)) in forgeries.into_iter().enumerate() {
        fleet.deploy("p", &v2_bytes, sig).await?;
        let line = format!("jetplug_plugin_swaps_total{{plugin=\"p\",outcome=\"{kind}\"}}");
        let want = if kind == "unsigned" { 1 } else { i as u64 };
        eventually(WAIT, &format!("forgery {i} refused"), || async {
            Ok(metric(&admin, &line).await? >= want)
        })
        .await
        .with_context(|| host.log())?;
        assert_eq!(running_hash(&admin).await?, v1, "the running version stays");
    }
    assert!(
        host.log().contains("deployed plugin version refused"),
        "{}",
        host.log()
    );

    // Signed with the trusted key: runs.
    let out = jetplug(&[
        "plugin",
        "deploy",
        "p",
        plugins::TEST_V2,
        "-c",
        conf_s,
        "--key",
        key.to_str().context("utf-8")?,
    ])?;
    assert!(out.status.success(), "{}", text(&out));
    runs(&host, &v2).await?;

    // Signed offline (`plugin sign`), deployed from the .sig file.
    let copy = dir.path().join("v1-again.wasm");
    std::fs::copy(plugins::TEST_V1, &copy)?;
    let copy_s = copy.to_str().context("utf-8")?;
    let out = jetplug(&[
        "plugin",
        "sign",
        copy_s,
        "--key",
        key.to_str().context("utf-8")?,
    ])?;
    assert!(out.status.success(), "{}", text(&out));
    let out = deploy(conf_s, copy_s, &[])?;
    assert!(out.status.success(), "{}", text(&out));
    runs(&host, &v1).await?;
    Ok(())
}
