//! `engine.fleet_cache_key`: hosts share compiled components through the
//! deploy bucket, so a host that joins (or swaps to a deployed version)
//! loads what another compiled; a host with another key refuses them.

use super::*;
use futures::StreamExt;

const KEY: &str = "fleet-key-for-tests-0123456789abcdef";
const OTHER_KEY: &str = "another-fleet-key-0123456789abcdef!";

/// A host config with its own cache directory and the fleet `key`.
fn cache_config(
    dir: &Path,
    url: &str,
    admin: &str,
    cache: &str,
    key: &str,
) -> anyhow::Result<PathBuf> {
    hotswap_config(dir, url, admin)?
        .set("host", "watch_plugins", false)
        .set("engine", "cache_dir", dir.join(cache).display().to_string())
        .set("engine", "fleet_cache_key", key)
        .write(&config_path(dir, admin))
}

/// How the host at `admin` got its running version's compiled code.
async fn compiled(admin: &str) -> anyhow::Result<String> {
    let (_, body) = http_get(admin, "/v1/plugins").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["plugins"][0]["compiled"]
        .as_str()
        .unwrap_or("")
        .to_owned())
}

/// The names of the shared compiled components in the deploy bucket.
async fn shared(js: &jetstream::Context) -> anyhow::Result<Vec<String>> {
    let store = js.get_object_store("jetplug-plugins").await?;
    let mut list = store.list().await?;
    let mut out = Vec::new();
    while let Some(info) = list.next().await {
        let name = info?.name;
        if name.starts_with("compiled/") {
            out.push(name);
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_host_loads_what_another_compiled_and_a_foreign_key_is_refused()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    let v2 = content_hash(&std::fs::read(plugins::TEST_V2)?);
    let [admin_a, admin_b, admin_c] = [admin_addr()?, admin_addr()?, admin_addr()?];

    // A compiles (its cache is empty) and shares what it compiled.
    let conf_a = cache_config(dir.path(), &nats.url(), &admin_a, "cache-a", KEY)?;
    let a = host_process(&conf_a, admin_a, dir.path().join("a.log"))?;
    a.ready().await?;
    assert_eq!(compiled(&a.admin).await?, "stored", "{}", a.log());
    eventually(WAIT, "v1's compiled code shared", || async {
        Ok(shared(&js).await?.iter().any(|n| n.ends_with(&v1)))
    })
    .await
    .with_context(|| a.log())?;

    // B has an empty cache of its own and the same key: no compile.
    let conf_b = cache_config(dir.path(), &nats.url(), &admin_b, "cache-b", KEY)?;
    let b = host_process(&conf_b, admin_b, dir.path().join("b.log"))?;
    b.ready().await?;
    assert_eq!(compiled(&b.admin).await?, "hit", "{}", b.log());
    assert!(
        b.log().contains("compiled component taken from the fleet"),
        "{}",
        b.log()
    );

    // C holds another key: the shared code is refused, C compiles.
    let conf_c = cache_config(dir.path(), &nats.url(), &admin_c, "cache-c", OTHER_KEY)?;
    let c = host_process(&conf_c, admin_c, dir.path().join("c.log"))?;
    c.ready().await?;
    assert_eq!(compiled(&c.admin).await?, "stored", "{}", c.log());
    assert!(
        c.log()
            .contains("not sealed with this host's engine.fleet_cache_key"),
        "{}",
        c.log()
    );
    drop(c);

    // A deploy shares the new version's code: B swaps to it without compiling.
    let conf = conf_a.to_str().context("utf-8 path")?;
    let out = deploy(conf, plugins::TEST_V2, &[])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("compiled code shared with the fleet"),
        "{}",
        text(&out)
    );
    runs(&b, &v2).await?;
    assert_eq!(compiled(&b.admin).await?, "hit", "{}", b.log());
    runs(&a, &v2).await?;
    Ok(())
}

#[test]
fn a_short_key_or_no_cache_is_refused_by_check() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = || hotswap_config(dir.path(), "nats://127.0.0.1:4222", "127.0.0.1:1");
    for (config, says) in [
        (
            base()?.set("engine", "fleet_cache_key", "short"),
            "engine.fleet_cache_key: is 5 bytes long; use at least 32",
        ),
        (
            base()?
                .set("engine", "fleet_cache_key", KEY)
                .set("engine", "no_cache", true),
            "needs the compiled-component cache, which engine.no_cache turns off",
        ),
        (
            base()?
                .set("engine", "fleet_cache_key", KEY)
                .set("host", "deploy_bucket", ""),
            "needs host.deploy_bucket",
        ),
    ] {
        let path = config.write_in(dir.path())?;
        let out = jetplug(&["check", "-c", path.to_str().context("utf-8 path")?])?;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(says),
            "wanted `{says}` in:\n{}",
            text(&out)
        );
    }
    Ok(())
}
