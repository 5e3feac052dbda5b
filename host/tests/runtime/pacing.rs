//! Pacing: a long call is slowed only while other calls run, and its
//! pauses are not charged to its deadline.

use super::*;

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
