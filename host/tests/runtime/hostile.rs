//! Hostile plugins (loop, memory bomb, panic, wrong count, failing `init`)
//! are stopped and reported precisely, and the next batch runs on a fresh
//! instance.

use super::*;

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
