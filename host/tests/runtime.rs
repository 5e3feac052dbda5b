//! The wasm runtime against real components from plugins/: hostile plugins
//! are stopped and reported precisely, the host keeps going on a fresh
//! instance, loading refuses bad components with clear errors, grants are
//! enforced, and the compile cache spares a restart from recompiling.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetplug::capability::Grants;
use jetplug::engine::cache::CacheOutcome;
use jetplug::engine::{EngineSettings, Runtime};
use jetplug::plugin::{self, BatchError, Limits, LoadError, PluginInstance, PluginSpec};
use jetplug::{Decision, Message};
use jetplug_tests::plugins;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn runtime(cache_dir: Option<PathBuf>) -> Result<Arc<Runtime>, Box<dyn std::error::Error>> {
    Ok(Arc::new(Runtime::new(EngineSettings {
        max_instances: 16,
        cache_dir,
        ..EngineSettings::default()
    })?))
}

fn spec(path: &str) -> PluginSpec {
    let name = std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    PluginSpec::new(name, path)
}

fn msg(payload: &str) -> Message {
    Message {
        stream: "TEST".into(),
        consumer: "c".into(),
        subject: "test.subject".into(),
        headers: vec![],
        payload: payload.as_bytes().to_vec(),
        stream_seq: 1,
        delivered: 1,
        published_at_ms: 0,
        tenant: "default".into(),
    }
}

fn instance(rt: &Arc<Runtime>, spec: PluginSpec) -> Result<PluginInstance, LoadError> {
    Ok(PluginInstance::new(Arc::new(plugin::load(rt, spec)?)))
}

/// A hostile batch fails with `check`, and the next (benign) batch succeeds on
/// a second, fresh instance.
async fn fails_then_recovers(
    inst: &mut PluginInstance,
    check: impl FnOnce(&BatchError),
) -> TestResult {
    let err = inst
        .handle([msg("boom"), msg("ok")])
        .await
        .err()
        .ok_or("hostile batch succeeded")?;
    check(&err);
    let decisions = inst.handle([msg("ok"), msg("ok")]).await?;
    assert!(matches!(decisions[..], [Decision::Ack, Decision::Ack]));
    assert_eq!(
        inst.instances_created(),
        2,
        "next batch ran on a fresh instance"
    );
    Ok(())
}

#[tokio::test]
async fn noop_plugin_decides_per_payload_and_reuses_its_instance() -> TestResult {
    let rt = runtime(None)?;
    let mut inst = instance(&rt, spec(plugins::TEST_NOOP))?;
    for _ in 0..3 {
        let d = inst
            .handle([
                msg("x"),
                msg("retry"),
                msg("retry:250"),
                msg("term:bad event"),
            ])
            .await?;
        assert_eq!(d.len(), 4);
        assert!(matches!(d[0], Decision::Ack));
        assert!(matches!(d[1], Decision::Retry(None)));
        assert!(matches!(d[2], Decision::Retry(Some(250))));
        assert!(matches!(&d[3], Decision::Term(r) if r == "bad event"));
    }
    assert_eq!(inst.instances_created(), 1);
    assert!(
        !rt.slow_lane().started(),
        "a plugin that behaves never uses the slow lane"
    );
    Ok(())
}

#[tokio::test]
async fn infinite_loop_is_interrupted_near_the_deadline() -> TestResult {
    let rt = runtime(None)?;
    let deadline = Duration::from_millis(300);
    let mut inst = instance(
        &rt,
        PluginSpec {
            limits: Limits {
                deadline,
                ..Limits::default()
            },
            ..spec(plugins::TEST_LOOP)
        },
    )?;
    inst.ready().await?;
    assert!(!inst.plugin().last_call_overran());
    let started = Instant::now();
    let mut elapsed = Duration::ZERO;
    let plugin = inst.plugin().clone();
    fails_then_recovers(&mut inst, |e| {
        elapsed = started.elapsed();
        assert!(
            plugin.last_call_overran(),
            "a deadline marks the plugin for throttling"
        );
        assert!(
            rt.slow_lane().started(),
            "a call running past throttle_after moves to the slow lane"
        );
        assert!(
            matches!(e, BatchError::Deadline { deadline: d, .. } if *d == deadline),
            "{e}"
        );
        assert_eq!(e.kind(), "deadline");
    })
    .await?;
    assert!(
        !inst.plugin().last_call_overran(),
        "a call that finished in time clears the mark"
    );
    assert!(elapsed >= deadline, "interrupted early: {elapsed:?}");
    // deadline + one epoch tick, with slack for a loaded 2-core machine.
    assert!(
        elapsed < deadline + Duration::from_secs(2),
        "interrupted late: {elapsed:?}"
    );
    Ok(())
}

fn looping(rt: &Arc<Runtime>, deadline: Duration) -> Result<PluginInstance, LoadError> {
    instance(
        rt,
        PluginSpec {
            limits: Limits {
                deadline,
                ..Limits::default()
            },
            ..spec(plugins::TEST_LOOP)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_call_is_paced_while_other_calls_run_and_only_then() -> TestResult {
    let rt = runtime(None)?;
    let deadline = Duration::from_millis(500);
    // Alone, a long call runs at full speed.
    let mut alone = looping(&rt, deadline)?;
    alone.ready().await?;
    let err = alone
        .handle([msg("spin")])
        .await
        .err()
        .ok_or("loop returned")?;
    assert_eq!(err.kind(), "deadline", "{err}");
    assert_eq!(
        alone.last_call_paused(),
        Duration::ZERO,
        "paced with nobody waiting"
    );

    // Beside a pipeline making short calls with gaps between them (at most
    // ticks none is in flight), it gives way most of the time.
    let neighbour = Neighbour::start(&rt).await?;
    let mut paced = looping(&rt, deadline)?;
    paced.ready().await?;
    let err = paced
        .handle([msg("spin")])
        .await
        .err()
        .ok_or("loop returned")?;
    let calls = neighbour.stop().await?;
    assert_eq!(err.kind(), "deadline", "{err}");
    assert!(calls > 10, "the neighbour made {calls} calls");
    let paused = paced.last_call_paused();
    assert!(
        paused >= deadline / 3,
        "paused {paused:?} in a call with a {deadline:?} deadline beside a busy neighbour"
    );
    Ok(())
}

/// A pipeline's worth of short no-op calls with short gaps between them.
struct Neighbour {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Result<u32, BatchError>>,
}

impl Neighbour {
    async fn start(rt: &Arc<Runtime>) -> Result<Self, Box<dyn std::error::Error>> {
        let mut busy = instance(rt, spec(plugins::TEST_NOOP))?;
        busy.ready().await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut calls = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    busy.handle([msg("x")]).await?;
                    calls += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(calls)
            }
        });
        Ok(Neighbour { stop, task })
    }

    /// Stops it; the calls it made.
    async fn stop(self) -> Result<u32, Box<dyn std::error::Error>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await??)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_for_others_do_not_count_against_the_deadline() -> TestResult {
    let rt = runtime(None)?;
    let with_deadline = |deadline| PluginSpec {
        limits: Limits {
            deadline,
            ..Limits::default()
        },
        ..spec(plugins::TEST_NOOP)
    };
    // Enough work to take 150 ms alone (nobody waits, so no pacing).
    let mut alone = instance(&rt, with_deadline(Duration::from_secs(30)))?;
    alone.ready().await?;
    let (mut rounds, mut took) = (25u64, Duration::ZERO);
    while took < Duration::from_millis(150) && rounds < 1 << 20 {
        rounds *= 2;
        let started = Instant::now();
        alone.handle([msg(&format!("spin:{rounds}"))]).await?;
        took = started.elapsed();
    }
    assert_eq!(alone.last_call_paused(), Duration::ZERO);
    // Five times that is ample alone; paced at one tick in eight beside a
    // busy neighbour the call takes about eight times as long (more on a
    // loaded machine), all but its own share of it excused.
    let deadline = took * 5;
    let mut heavy = instance(&rt, with_deadline(deadline))?;
    heavy.ready().await?;
    let neighbour = Neighbour::start(&rt).await?;
    let result = heavy.handle([msg(&format!("spin:{rounds}"))]).await;
    neighbour.stop().await?;
    assert!(
        heavy.last_call_paused() > Duration::ZERO,
        "the call was not paced (took {took:?} alone)"
    );
    let decisions = result.map_err(|e| format!("{e} (alone it took {took:?})"))?;
    assert!(matches!(decisions[..], [Decision::Ack]));
    Ok(())
}

#[tokio::test]
async fn memory_bomb_traps_at_the_limit() -> TestResult {
    let rt = runtime(None)?;
    let limit = 32 << 20;
    let mut inst = instance(
        &rt,
        PluginSpec {
            limits: Limits {
                memory_bytes: limit,
                ..Limits::default()
            },
            ..spec(plugins::TEST_MEMBOMB)
        },
    )?;
    fails_then_recovers(&mut inst, |e| {
        assert!(
            matches!(e, BatchError::MemoryLimit { limit: l, .. } if *l == limit),
            "{e}"
        );
    })
    .await
}

#[tokio::test]
async fn panic_is_a_trap_with_the_panic_message() -> TestResult {
    let rt = runtime(None)?;
    let mut inst = instance(&rt, spec(plugins::TEST_PANIC))?;
    let plugin = inst.plugin().clone();
    fails_then_recovers(&mut inst, |e| {
        assert!(matches!(e, BatchError::Trap { .. }), "{e}");
        assert!(
            e.to_string().contains("refusing a batch of 2 messages"),
            "{e}"
        );
        assert!(plugin.last_call_failed());
        assert!(
            !rt.slow_lane().started(),
            "a call that failed fast never left its task"
        );
    })
    .await?;
    // The call after a failure ran on the slow lane, and succeeded.
    assert!(rt.slow_lane().started());
    assert!(!plugin.last_call_failed());
    Ok(())
}

#[tokio::test]
async fn wrong_number_of_decisions_is_an_error() -> TestResult {
    let rt = runtime(None)?;
    let mut inst = instance(&rt, spec(plugins::TEST_WRONG_COUNT))?;
    fails_then_recovers(&mut inst, |e| {
        assert!(
            matches!(
                e,
                BatchError::WrongDecisionCount {
                    expected: 2,
                    got: 3,
                    ..
                }
            ),
            "{e}"
        );
    })
    .await
}

#[tokio::test]
async fn failing_init_is_reported() -> TestResult {
    let rt = runtime(None)?;
    let mut inst = instance(
        &rt,
        PluginSpec {
            config: vec![("fail_init".into(), "no database url".into())],
            ..spec(plugins::TEST_NOOP)
        },
    )?;
    let err = inst.ready().await.err().ok_or("init succeeded")?;
    assert!(
        matches!(&err, BatchError::Init { reason, .. } if reason == "no database url"),
        "{err}"
    );
    Ok(())
}

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
    assert!(
        err.to_string().contains("jetplug:plugin/handler@0.1.0"),
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

#[tokio::test]
async fn bench_dispatch_reports_every_figure() -> TestResult {
    let r =
        jetplug::bench::dispatch::run(std::path::Path::new(plugins::TEST_NOOP), 20, 10, 64, |_| {})
            .await?;
    assert_eq!((r.batches, r.batch_size, r.payload_bytes), (20, 10, 64));
    for v in [
        r.reuse.median_us,
        r.reuse.p99_us,
        r.fresh.median_us,
        r.fresh.p99_us,
    ] {
        assert!(v > 0.0 && v.is_finite(), "{r:?}");
    }
    assert!(r.reuse.p99_us >= r.reuse.median_us);
    assert!(!r.cold_start_compile.is_zero() && !r.cold_start_cached.is_zero());
    Ok(())
}

fn built(path: &str) -> Result<&str, String> {
    if std::path::Path::new(path).is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{path} is missing: `make plugins` builds the Python and JS plugins"
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// A Python plugin (componentize-py, built by `make plugins`) is held like a
/// Rust one: interrupted at its deadline, stopped at its memory limit, then
/// a fresh instance; below what CPython needs to start, the error says so.
async fn python_plugin_is_held_to_its_deadline_and_memory_limit() -> TestResult {
    let cache = tempfile::tempdir()?;
    let rt = runtime(Some(cache.path().to_path_buf()))?;
    // Default limits (64 MiB) and grants (log only): the plugin's world
    // imports nothing else.
    let py = PluginSpec {
        limits: Limits {
            deadline: Duration::from_millis(500),
            ..Limits::default()
        },
        grants: Grants::default(),
        ..spec(built(plugins::TEST_PY)?)
    };
    assert_eq!(py.limits.memory_bytes, 64 * 1024 * 1024);
    let mut inst = instance(&rt, py)?;
    inst.ready().await?;

    let d = inst.handle([msg("ok"), msg("alloc:32"), msg("x")]).await?;
    assert!(
        matches!(&d[..], [Decision::Ack, Decision::Ack, Decision::Term(r)] if r == "handled-by:py"),
        "{d:?}"
    );

    let err = inst.handle([msg("loop")]).await.err();
    assert!(
        matches!(err, Some(BatchError::Deadline { .. })),
        "a looping Python plugin must be interrupted at its deadline: {err:?}"
    );
    let d = inst.handle([msg("ok")]).await?;
    assert!(matches!(d[..], [Decision::Ack]));

    let err = inst.handle([msg("alloc:100")]).await.err();
    assert!(
        matches!(err, Some(BatchError::MemoryLimit { .. })),
        "100 MiB in a 64 MiB instance: {err:?}"
    );
    let d = inst.handle([msg("ok")]).await?;
    assert!(matches!(d[..], [Decision::Ack]));
    assert_eq!(
        inst.instances_created(),
        3,
        "a fresh instance after each failure"
    );

    // Below what CPython needs to start (~14 MiB), the error says so.
    let small = PluginSpec {
        limits: Limits {
            memory_bytes: 8 * 1024 * 1024,
            ..Limits::default()
        },
        ..spec(plugins::TEST_PY)
    };
    let mut inst = instance(&rt, small)?;
    let err = inst.ready().await.err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("memory limit of 8388608 bytes")),
        "{err:?}"
    );
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
            // Every plugin in plugins/ is built against 0.1.0 today.
            "0.1.0" => plugins::TEST_NOOP,
            other => return Err(format!("no test component built against WIT {other}").into()),
        };
        let bytes = std::fs::read(component)?;
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(&format!("jetplug:plugin/handler@{version}")),
            "{component} is not built against {version}"
        );
        let mut inst = instance(&rt, spec(component))?;
        let d = inst.handle([msg("ok")]).await?;
        assert!(matches!(d[..], [Decision::Ack]), "{version}: {d:?}");
    }
    Ok(())
}
