//! Loading: grants and calls within them, no ambient authority, bad files
//! and components, limits, the compile cache, every shipped WIT version.

use super::*;

#[tokio::test]
async fn ungranted_import_is_refused_with_plugin_interface_and_grant() -> TestResult {
    let rt = runtime(None)?;
    let err = plugin::load(&rt, spec(plugins::TEST_CAPABILITIES))
        .err()
        .ok_or("loaded without grants")?;
    match &err {
        LoadError::UngrantedImport {
            plugin,
            interface,
            grant,
        } => {
            assert_eq!(plugin, "test_capabilities");
            assert!(interface.starts_with("jetplug:plugin/"), "{interface}");
            assert!(interface.contains(grant.name()), "{interface} vs {grant}");
        }
        other => return Err(format!("wrong error: {other}").into()),
    }
    let text = err.to_string();
    assert!(
        text.contains("test_capabilities") && text.contains("not granted"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn calls_are_checked_against_the_grant() -> TestResult {
    let rt = runtime(None)?;
    let grants = Grants {
        publish: vec!["allowed.>".into()],
        sql: vec!["events".into()],
        kv: vec!["state".into()],
        ..Grants::default()
    };
    let mut inst = instance(
        &rt,
        PluginSpec {
            grants,
            ..spec(plugins::TEST_CAPABILITIES)
        },
    )?;
    let payloads = [
        "sql:billing",
        "publish:forbidden.subject",
        "kv:secrets",
        "sql:events",
        "publish:allowed.x",
        "kv:state",
        "log line",
    ];
    let batch: Vec<_> = payloads.iter().map(|p| msg(p)).collect();
    let d = inst.handle(batch.clone()).await?;
    let reasons: Vec<String> = d
        .iter()
        .map(|d| match d {
            Decision::Term(r) => r.clone(),
            Decision::Ack => "ack".into(),
            Decision::Retry(_) => "retry".into(),
        })
        .collect();
    for (i, name) in ["billing", "forbidden.subject", "secrets"]
        .iter()
        .enumerate()
    {
        assert!(
            reasons[i].starts_with("access-denied") && reasons[i].contains(name),
            "{}",
            reasons[i]
        );
    }
    // Granted calls pass the check; no backend is wired in yet.
    for r in &reasons[3..6] {
        assert!(r.starts_with("unavailable"), "{r}");
    }
    assert_eq!(reasons[6], "ack");
    Ok(())
}

#[tokio::test]
async fn no_ambient_files_env_or_network() -> TestResult {
    let rt = runtime(None)?;
    let mut inst = instance(
        &rt,
        PluginSpec {
            grants: Grants::all(),
            ..spec(plugins::TEST_CAPABILITIES)
        },
    )?;
    let d = inst.handle([msg("ambient")]).await?;
    assert!(
        matches!(&d[..], [Decision::Term(r)] if r == "fs=denied env=0 net=denied"),
        "{d:?}"
    );
    Ok(())
}

#[tokio::test]
async fn component_of_another_world_is_not_a_plugin() -> TestResult {
    let rt = runtime(None)?;
    let err = plugin::load(&rt, spec(plugins::TEST_NOT_A_PLUGIN))
        .err()
        .ok_or("loaded")?;
    assert!(matches!(err, LoadError::NotAPlugin { .. }), "{err}");
    let version = jetplug::wit::PACKAGE.rsplit('@').next().unwrap_or_default();
    assert!(
        err.to_string().contains(&format!(
            "jetplug:plugin/handler@{version}` (it exports run)"
        )),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_files_get_clear_errors() -> TestResult {
    let rt = runtime(None)?;
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm")?;
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0")?;
    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(plugins::TEST_NOOP)?;
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let missing = dir.path().join("missing.wasm");

    let load = |p: &std::path::Path| plugin::load(&rt, PluginSpec::new("p", p)).err();
    assert!(matches!(load(&garbage), Some(LoadError::NotWasm { .. })));
    assert!(matches!(load(&core), Some(LoadError::CoreModule { .. })));
    assert!(matches!(load(&truncated), Some(LoadError::Invalid { .. })));
    assert!(matches!(load(&missing), Some(LoadError::Read { .. })));
    let text = load(&truncated).map(|e| e.to_string()).unwrap_or_default();
    assert!(text.contains("truncated.wasm"), "{text}");
    Ok(())
}

#[tokio::test]
async fn memory_limit_above_engine_maximum_is_refused() -> TestResult {
    let rt = runtime(None)?;
    let err = plugin::load(
        &rt,
        PluginSpec {
            limits: Limits {
                memory_bytes: 1 << 40,
                ..Limits::default()
            },
            ..spec(plugins::TEST_NOOP)
        },
    )
    .err();
    assert!(matches!(err, Some(LoadError::MemoryLimitTooLarge { .. })));
    Ok(())
}

#[tokio::test]
async fn compiled_components_are_cached_across_restarts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let first = plugin::load(&runtime(Some(dir.path().into()))?, spec(plugins::TEST_NOOP))?;
    assert_eq!(first.cache_outcome(), CacheOutcome::Stored);

    // A new engine (as after a restart) with the same settings: no recompile.
    let rt = runtime(Some(dir.path().into()))?;
    let second = plugin::load(&rt, spec(plugins::TEST_NOOP))?;
    assert_eq!(second.cache_outcome(), CacheOutcome::Hit);
    assert_eq!(first.hash(), second.hash());
    let mut inst = PluginInstance::new(Arc::new(second));
    assert!(matches!(
        inst.handle([msg("x")]).await?[..],
        [Decision::Ack]
    ));

    // A corrupt entry is recompiled and replaced, never fatal.
    let entry = rt.cache().ok_or("cache enabled")?.entry_path(first.hash());
    std::fs::write(&entry, b"corrupt")?;
    let third = plugin::load(&rt, spec(plugins::TEST_NOOP))?;
    assert_eq!(third.cache_outcome(), CacheOutcome::Stored);
    assert_eq!(
        plugin::load(&rt, spec(plugins::TEST_NOOP))?.cache_outcome(),
        CacheOutcome::Hit
    );
    Ok(())
}

/// Native code is loaded from the cache only if this host wrote it: a
/// tampered entry, an entry written by another host (another key), a
/// directory others may write and a key others may read are not trusted.
#[tokio::test]
async fn the_cache_loads_only_what_this_host_wrote() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let rt = runtime(Some(dir.path().into()))?;
    let first = plugin::load(&rt, spec(plugins::TEST_NOOP))?;
    assert_eq!(first.cache_outcome(), CacheOutcome::Stored);
    let entry = rt.cache().ok_or("cache enabled")?.entry_path(first.hash());
    let key = dir.path().join(".host-key");
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);

    // Tampered: one byte of the code changed, same length.
    let mut bytes = std::fs::read(&entry)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&entry, &bytes)?;
    let again = plugin::load(&rt, spec(plugins::TEST_NOOP))?;
    assert_eq!(
        again.cache_outcome(),
        CacheOutcome::Stored,
        "recompiled, not loaded"
    );
    let mut inst = PluginInstance::new(Arc::new(again));
    assert!(matches!(
        inst.handle([msg("x")]).await?[..],
        [Decision::Ack]
    ));
    assert_eq!(
        plugin::load(&rt, spec(plugins::TEST_NOOP))?.cache_outcome(),
        CacheOutcome::Hit
    );

    // Foreign: a valid entry from another host's cache (another key).
    let other = tempfile::tempdir()?;
    let other_rt = runtime(Some(other.path().into()))?;
    plugin::load(&other_rt, spec(plugins::TEST_NOOP))?;
    let foreign = other_rt
        .cache()
        .ok_or("cache enabled")?
        .entry_path(first.hash());
    std::fs::copy(&foreign, &entry)?;
    assert_eq!(
        plugin::load(&rt, spec(plugins::TEST_NOOP))?.cache_outcome(),
        CacheOutcome::Stored
    );

    // A key file others can read: the cache is off (compiled, nothing read).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let rt2 = runtime(Some(dir.path().into()))?;
    assert_eq!(
        plugin::load(&rt2, spec(plugins::TEST_NOOP))?.cache_outcome(),
        CacheOutcome::Compiled
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;

    // A directory others can write: off too, and nothing is written there.
    let open = tempfile::tempdir()?;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777))?;
    let rt3 = runtime(Some(open.path().into()))?;
    assert_eq!(
        plugin::load(&rt3, spec(plugins::TEST_NOOP))?.cache_outcome(),
        CacheOutcome::Compiled
    );
    assert_eq!(std::fs::read_dir(open.path())?.count(), 0);
    Ok(())
}

/// The compatibility rule: the host loads a component built against every
/// WIT version it has shipped. Shipping a new version makes this test fail
/// until a component built against the previous one is kept in plugins/.
#[tokio::test]
async fn loads_a_component_built_against_every_shipped_wit_version() -> TestResult {
    let rt = runtime(None)?;
    for version in jetplug::wit::SHIPPED {
        let component = match *version {
            // Frozen at the first contract (wit/0.1.0), imports sql@0.1.0.
            "0.1.0" => plugins::TEST_WIT_0_1_0,
            // Every other plugin in plugins/ is built against the current one.
            "0.1.1" => plugins::TEST_NOOP,
            other => return Err(format!("no test component built against WIT {other}").into()),
        };
        let bytes = std::fs::read(component)?;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(&format!("jetplug:plugin/handler@{version}")),
            "{component} is not built against {version}"
        );
        if *version == "0.1.0" {
            assert!(text.contains("jetplug:plugin/sql@0.1.0"), "{component}");
        }
        let mut spec = spec(component);
        // The frozen component imports `sql@0.1.0`: linked to the host's
        // current `sql` by semver.
        spec.grants.sql = vec!["events".into()];
        let mut inst = instance(&rt, spec)?;
        let d = inst.handle([msg("ok")]).await?;
        assert!(matches!(d[..], [Decision::Ack]), "{version}: {d:?}");
    }
    Ok(())
}
