//! `plugin deploy|rollback|history` across two host processes sharing a
//! consumer.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_deploy_and_rollback_across_two_host_processes() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (admin_a, admin_b) = (admin_addr()?, admin_addr()?);
    // No file watching: versions arrive only through NATS.
    let conf_a = write_config(dir.path(), &nats.url(), &admin_a, "watch_plugins = false")?;
    let conf_b = write_config(dir.path(), &nats.url(), &admin_b, "watch_plugins = false")?;
    let conf = conf_a.to_str().context("utf-8 path")?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    let v2 = content_hash(&std::fs::read(plugins::TEST_V2)?);

    let a = host_process(&conf_a, admin_a, dir.path().join("a.log"))?;
    a.ready().await?;
    runs(&a, &v1).await?;

    // Refused before anything is announced: not a plugin, unknown name.
    let out = deploy(conf, plugins::TEST_NOT_A_PLUGIN, &[])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not a valid new version of `p`"),
        "{}",
        text(&out)
    );
    let out = jetplug(&["plugin", "deploy", "nosuch", plugins::TEST_V2, "-c", conf])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("declares no plugin `nosuch` (declared: p)"),
        "{}",
        text(&out)
    );
    let out = jetplug(&["plugin", "rollback", "p", "-c", conf])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no earlier version to roll back to"),
        "{}",
        text(&out)
    );

    let out = deploy(conf, plugins::TEST_V2, &[])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("deployed plugin `p`: version {}", &v2[..12])),
        "{}",
        text(&out)
    );
    runs(&a, &v2).await?;
    // A host started after the deploy comes up on the deployed version.
    let b = host_process(&conf_b, admin_b, dir.path().join("b.log"))?;
    b.ready().await?;
    assert_eq!(running_hash(&b.admin).await?, v2, "{}", b.log());

    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_steadily(&js, 300, 50).await?;
    eventually(WAIT, "300 handled", || async {
        Ok(dlq_count(&js).await? == 300)
    })
    .await?;

    let out = jetplug(&["plugin", "rollback", "p", "-c", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rolled back plugin `p` to the file named in the configuration"),
        "{}",
        text(&out)
    );
    runs(&a, &v1).await?;
    runs(&b, &v1).await?;
    publish_steadily(&js, 300, 50).await?;
    eventually(WAIT, "600 handled", || async {
        Ok(dlq_count(&js).await? == 600)
    })
    .await?;

    let letters = dead_letters(&js).await?;
    let reasons: Vec<&str> = letters.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons[..300].iter().all(|r| *r == "handled-by:v2"),
        "{reasons:?}"
    );
    assert!(
        reasons[300..].iter().all(|r| *r == "handled-by:v1"),
        "{reasons:?}"
    );
    let mut seqs: Vec<u64> = letters.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        600,
        "each message handled once across both hosts"
    );
    let handled = |admin: String| async move {
        let (_, p) = http_get(&admin, "/v1/pipelines").await?;
        let p: serde_json::Value = serde_json::from_str(&p)?;
        anyhow::Ok(p["pipelines"][0]["dead_lettered"].as_u64().unwrap_or(0))
    };
    let on_b = handled(b.admin.clone()).await?;
    assert_eq!(handled(a.admin.clone()).await? + on_b, 600);

    let out = jetplug(&["plugin", "history", "p", "-c", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    let history = text(&out);
    assert!(
        history.contains(&format!("version {}", &v2[..12]))
            && history.contains("* ")
            && history
                .trim_end()
                .ends_with("the file named in the configuration"),
        "{history}"
    );
    Ok(())
}
