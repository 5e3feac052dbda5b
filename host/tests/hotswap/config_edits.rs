//! The configuration file edited while running.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_are_validated_and_plugin_sections_reload_live() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = admin_addr()?;
    let base = hotswap_config(dir.path(), &nats.url(), &admin)?;
    let config = base.write(&config_path(dir.path(), &admin))?;
    let host = host_process(&config, admin.clone(), dir.path().join("host.log"))?;
    host.ready().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let reloads =
        |outcome: &'static str| format!(r#"jetplug_config_reloads_total{{outcome="{outcome}"}}"#);

    // Invalid: a wrong type in a pipeline. Reported with file and key; nothing changes.
    let many = base.clone().set("pipeline.main", "batch", "many");
    replace_file(&config, many.text().as_bytes())?;
    eventually(WAIT, "the invalid edit reported", || async {
        Ok(metric(&admin, &reloads("invalid")).await? == 1)
    })
    .await?;
    let log = host.log();
    assert!(
        log.contains("the edited configuration is invalid")
            && log.contains(&format!("{}:", config.display()))
            && log.contains("pipeline"),
        "{log}"
    );
    publish_steadily(&js, 20, 20).await?;
    eventually(WAIT, "traffic goes on", || async {
        Ok(dlq_count(&js).await? == 20)
    })
    .await?;

    // A plugin setting whose new `init` fails: refused, v1 keeps running.
    let refusing = base.clone().set("plugin.p.config", "refuse_version", "v1");
    replace_file(&config, refusing.text().as_bytes())?;
    eventually(WAIT, "the failing plugin settings refused", || async {
        Ok(metric(&admin, &reloads("refused")).await? == 1)
    })
    .await?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    assert_eq!(running_hash(&admin).await?, v1);

    // A new plugin file in the config: reloaded live.
    let other = dir.path().join("other.wasm");
    std::fs::copy(plugins::TEST_V2, &other)?;
    let edited = base.clone().plugin("p", &other);
    replace_file(&config, edited.text().as_bytes())?;
    runs(&host, &content_hash(&std::fs::read(plugins::TEST_V2)?)).await?;
    assert_eq!(metric(&admin, &reloads("applied")).await?, 1);
    publish_steadily(&js, 20, 20).await?;
    eventually(WAIT, "20 more", || async {
        Ok(dlq_count(&js).await? == 40)
    })
    .await?;
    let letters = dead_letters(&js).await?;
    assert!(letters[..20].iter().all(|(_, r)| r == "handled-by:v1"));
    assert!(
        letters[20..].iter().all(|(_, r)| r == "handled-by:v2"),
        "{letters:?}"
    );

    // Other sections: not applied, but said so.
    let bigger = edited.set("pipeline.main", "batch", 60);
    replace_file(&config, bigger.text().as_bytes())?;
    eventually(WAIT, "restart-needed reported", || async {
        Ok(metric(&admin, &reloads("restart-needed")).await? == 1)
    })
    .await?;
    assert!(
        host.log()
            .contains("these changes take effect after a restart")
    );
    assert!(host.log().contains("[[pipeline]]"));
    Ok(())
}
