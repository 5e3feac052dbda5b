//! Plugins in other languages held like Rust ones.

use super::*;

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
