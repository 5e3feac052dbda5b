//! The host: load every plugin, connect, reconcile streams, run every
//! pipeline, and on shutdown stop pulling, settle what is in flight and exit.
//!
//! Plugins are loaded and initialised before anything connects, so a broken
//! plugin fails the start with a clear error instead of failing messages.

mod compiled;
pub mod resolve;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::capability::Backends;
use crate::capability::backends::BackendError;
use crate::config::{Config, ConfigError};
use crate::deadletter::Route;
use crate::engine::cache::FleetKey;
use crate::engine::{EngineError, Runtime};
use crate::hotswap::signing::TrustedKey;
use crate::hotswap::{Swapper, fleet::Fleet, watch};
use crate::jetstream::{self, ConnectError, Health};
use crate::metrics::{Metrics, labels};
use crate::pipeline::backoff::Backoff;
use crate::pipeline::effects::EffectsPlan;
use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::plugin::{self, BatchError, LoadError, Plugin, PluginInstance, PluginSlot, PluginSpec};

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("plugin `{plugin}` failed to start: {source}")]
    Start {
        plugin: String,
        #[source]
        source: BatchError,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cannot listen for the admin server on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running host's shared parts, for callers that want to observe it.
#[derive(Debug, Clone)]
pub struct HostHandle {
    pub health: Arc<Health>,
    pub stats: BTreeMap<String, Arc<Stats>>,
}

/// The ledger and outbox of an exactly-once pipeline (None otherwise).
pub(crate) fn effects_plan(
    config: &Config,
    pc: &crate::config::PipelineConfig,
    backends: &Backends,
) -> Result<Option<Arc<EffectsPlan>>, BackendError> {
    if pc.effects != crate::config::Effects::ExactlyOnce {
        return Ok(None);
    }
    let plugin = &config.plugins[&pc.plugin];
    // Validation has made sure there is one, declared and granted.
    let Some(db) = pc.effects_database(plugin) else {
        return Ok(None);
    };
    let pool = backends
        .database(db)
        .map_err(|e| BackendError {
            name: db.to_owned(),
            reason: format!("{e:?}"),
        })?
        .clone();
    Ok(Some(Arc::new(EffectsPlan::new(
        db,
        pool,
        plugin.grants.sql_role.clone(),
        crate::capability::effects::Tables::new(
            &pc.effects_schema,
            &pc.effects_ledger_table,
            &pc.effects_outbox_table,
        ),
        pc.effects_retention.0,
    ))))
}

/// Loads and starts every plugin the pipelines use (compile, link, `init`).
pub async fn load_plugins(
    config: &Config,
    runtime: &Arc<Runtime>,
    backends: &Arc<Backends>,
) -> Result<BTreeMap<String, Arc<Plugin>>, HostError> {
    let used = compiled::used_plugins(config);
    let mut loaded = BTreeMap::new();
    let mut loader = plugin::Loader::default();
    for name in used {
        if loaded.contains_key(name) {
            continue;
        }
        let spec = PluginSpec::from_config(name, &config.plugins[name]);
        let plugin = Arc::new(loader.load(runtime, spec, backends.clone())?);
        PluginInstance::new(plugin.clone())
            .ready()
            .await
            .map_err(|source| HostError::Start {
                plugin: name.clone(),
                source,
            })?;
        tracing::info!(plugin = %name, hash = plugin.hash(), cache = ?plugin.cache_outcome(), "plugin loaded");
        loaded.insert(name.clone(), plugin);
    }
    Ok(loaded)
}

/// Makes the advisory stream (`host.advisory_stream`) and returns its name;
/// None if it is off or cannot be made (e.g. another stream of the account
/// already captures the advisories): then they are heard live only.
async fn keep_advisories(config: &Config, js: &async_nats::jetstream::Context) -> Option<String> {
    let kept = config.advisory_stream()?;
    match jetstream::streams::reconcile(js, std::slice::from_ref(&kept)).await {
        Ok(_) => Some(kept.name),
        Err(e) => {
            tracing::warn!(stream = %kept.name, error = %e,
                "the advisory stream cannot be made: MAX_DELIVERIES advisories are heard live only \
                 (one emitted while no host listens is missed); set host.advisory_stream = \"\" to say so");
            None
        }
    }
}

/// Opens the capture bucket (`host.capture_bucket`) when a pipeline
/// captures; None if none does, it is off, or it cannot be opened (then no
/// captures are kept, said once).
async fn open_captures(
    config: &Config,
    js: &async_nats::jetstream::Context,
) -> Option<crate::pipeline::capture::Capturer> {
    let wanted = config
        .pipelines
        .iter()
        .any(|p| p.capture != crate::config::Capture::Off);
    if !wanted || config.host.capture_bucket.is_empty() {
        return None;
    }
    let settings = crate::capture::store::BucketSettings {
        bucket: config.host.capture_bucket.clone(),
        retention: config.host.capture_retention.0,
        max_bytes: config.host.capture_max_bytes.0,
        replicas: config
            .streams
            .iter()
            .map(|s| usize::from(s.replicas))
            .max()
            .unwrap_or(1),
    };
    match crate::capture::store::Captures::open(js, &settings).await {
        Ok(store) => Some(crate::pipeline::capture::Capturer {
            store,
            host: crate::hotswap::rollout::host_name(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "captures are off: the capture bucket cannot be opened");
            None
        }
    }
}

/// Brings the plugins to the fleet's announced versions (before any
/// pipeline runs), then follows new deploys in the background.
async fn follow_deploys(
    config: &Config,
    js: &async_nats::jetstream::Context,
    swapper: &Arc<Swapper>,
    loaded: &BTreeMap<String, Arc<Plugin>>,
    trusted: Vec<TrustedKey>,
    sharing: Option<(FleetKey, Arc<Runtime>)>,
    shutdown: &CancellationToken,
) {
    let bucket = &config.host.deploy_bucket;
    match Fleet::open(js, bucket).await {
        Ok(fleet) => {
            let artifacts = sharing.map(|(key, runtime)| fleet.artifacts(key, runtime));
            if let Some(a) = &artifacts {
                compiled::push(a.clone(), loaded);
            }
            let fleet = fleet.trusting(trusted).sharing(artifacts);
            let files = loaded
                .iter()
                .map(|(n, p)| (n.clone(), p.spec().path.clone()))
                .collect();
            fleet.follow(swapper.clone(), files, shutdown.clone()).await;
            tracing::info!(%bucket, "following plugin deploys");
        }
        Err(e) => tracing::warn!(error = %e, "plugin deploys are not followed"),
    }
}

/// Runs until `shutdown` is cancelled. `on_start` receives the handle once
/// the pipelines are running.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_start: impl FnOnce(HostHandle),
) -> Result<(), HostError> {
    // The host's own stop: the caller's, or a pipeline that failed.
    let shutdown = shutdown.child_token();
    let resolved = resolve::resolve(&config)?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let runtime = Arc::new(Runtime::new(crate::engine::EngineSettings::from(
        &config.engine,
    ))?);
    // Tenants' CPU shares, when any tenant sets one (the others get 1).
    if config
        .tenants
        .values()
        .any(|t| t.limits.cpu_share.is_some())
    {
        let shares = config
            .tenants
            .iter()
            .map(|(n, t)| (n.clone(), t.limits.cpu_share.unwrap_or(1)))
            .collect();
        if let Some(s) = crate::engine::share::Shares::new(
            &shares,
            crate::engine::EngineSettings::from(&config.engine).epoch_tick,
        ) {
            runtime.set_shares(s);
        }
    }
    let backends = Backends::with_databases(&config.databases)?;
    let fleet_key = compiled::fleet_key(&config.engine, &runtime);
    if let Some(key) = &fleet_key {
        compiled::pull(&config, &runtime, key).await;
    }
    let loaded = load_plugins(&config, &runtime, &backends).await?;
    let plugins: BTreeMap<String, Arc<PluginSlot>> = loaded
        .iter()
        .map(|(name, p)| (name.clone(), PluginSlot::new(p.clone())))
        .collect();
    let health = Health::new();
    health.want_consumers(config.pipelines.iter().map(|p| p.streams.len()).sum());

    let (metrics, registry) = Metrics::new();
    let metrics = Arc::new(metrics);
    for (name, p) in &loaded {
        let l = labels(&[
            ("plugin", name),
            ("tenant", &p.spec().tenant),
            ("hash", p.hash()),
        ]);
        metrics.plugin_info.get_or_create(&l).set(1);
    }
    let admin = Arc::new(AdminState {
        health: health.clone(),
        registry,
        metrics: metrics.clone(),
        plugins: plugins.clone(),
        pipelines: OnceLock::new(),
        captures: OnceLock::new(),
        tenants: config
            .tenants
            .iter()
            .map(|(n, t)| (n.clone(), t.limits.clone()))
            .collect(),
    });
    if let Some(crate::config::AdminAddr(addr)) = config.admin.address {
        let listener = admin::bind(addr)
            .await
            .map_err(|source| HostError::Admin { addr, source })?;
        tracing::info!(%addr, "admin server listening");
        tokio::spawn(admin::serve(
            listener,
            admin.clone(),
            config.admin.token.clone(),
            shutdown.clone(),
        ));
    }

    let swapper = Arc::new(Swapper::new(
        runtime.clone(),
        backends.clone(),
        plugins.clone(),
        metrics.clone(),
    ));
    if config.host.watch_plugins {
        match watch::spawn(swapper.clone(), shutdown.clone()) {
            Ok(()) => tracing::info!("watching plugin files for new versions"),
            Err(e) => {
                tracing::warn!(error = %e, "plugin files are not watched; swaps by file are off")
            }
        }
    }
    if let Some(path) = &config.source {
        let watched = crate::hotswap::config::spawn(
            path.clone(),
            config.clone(),
            resolve::load,
            swapper.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        match watched {
            Ok(()) => tracing::info!(file = %path.display(), "watching the configuration file"),
            Err(e) => tracing::warn!(error = %e, "the configuration file is not watched"),
        }
    }

    let client = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        c = jetstream::connect(&config.nats, &health) => c?,
    };
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(config.nats.request_timeout.0);

    // Streams and buckets first; keep trying while JetStream is not answering.
    loop {
        let provisioned = async {
            jetstream::streams::reconcile(&js, &config.streams).await?;
            jetstream::buckets::ensure(&js, &config.buckets).await
        };
        match provisioned.await {
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reconcile streams yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }

    let advisory_stream = keep_advisories(&config, &js).await;
    backends.set_nats(js.clone());
    backends.set_publishing(config.nats.publish, health.publish_refusals());
    if !config.host.deploy_bucket.is_empty() {
        let sharing = fleet_key.map(|key| (key, runtime.clone()));
        follow_deploys(
            &config,
            &js,
            &swapper,
            &loaded,
            resolved.trusted,
            sharing,
            &shutdown,
        )
        .await;
    }
    let tenant_slots: BTreeMap<String, Arc<tokio::sync::Semaphore>> = config
        .tenants
        .iter()
        .filter_map(|(name, t)| {
            t.limits.max_concurrent_batches.map(|n| {
                (
                    name.clone(),
                    Arc::new(tokio::sync::Semaphore::new(n.max(1) as usize)),
                )
            })
        })
        .collect();
    for (name, t) in &config.tenants {
        for (quota, value) in [
            ("max_messages_per_second", t.limits.max_messages_per_second),
            ("max_concurrent_batches", t.limits.max_concurrent_batches),
            ("cpu_share", t.limits.cpu_share),
        ] {
            if let Some(v) = value {
                metrics
                    .tenant_quota
                    .get_or_create(&crate::metrics::labels(&[
                        ("tenant", name),
                        ("quota", quota),
                    ]))
                    .set(i64::from(v));
            }
        }
    }
    let tenant_rates: BTreeMap<String, Arc<crate::pipeline::quota::RateLimit>> = config
        .tenants
        .iter()
        .filter_map(|(name, t)| {
            t.limits.max_messages_per_second.map(|n| {
                (
                    name.clone(),
                    Arc::new(crate::pipeline::quota::RateLimit::new(n)),
                )
            })
        })
        .collect();
    let captures = open_captures(&config, &js).await;
    if let Some(c) = &captures {
        let _ = admin.captures.set(c.store.clone());
    }
    let mut tasks = JoinSet::new();
    let mut stats = BTreeMap::new();
    let leaders = jetstream::leaders::Leaders::start(client.clone(), shutdown.clone());
    // Routed until every pipeline has settled (not cut by the shutdown).
    let inboxes_stop = CancellationToken::new();
    let inboxes = jetstream::inboxes::Inboxes::start(client.clone(), inboxes_stop.clone()).await;
    let mut running = Vec::new();
    for pc in &config.pipelines {
        let route = match &pc.dead_letter {
            None => Route::Builtin {
                js: Box::new(js.clone()),
                policy: config.nats.publish,
                refusals: Some(health.publish_refusals()),
            },
            Some(name) => Route::Plugin {
                instance: Box::new(tokio::sync::Mutex::new(PluginInstance::new(
                    plugins[name].current(),
                ))),
                slot: plugins[name].clone(),
                tenant: config.plugins[name].tenant.clone(),
            },
        };
        let tenant = config.plugins[&pc.plugin].tenant.clone();
        let tenant_name = tenant.clone();
        let pipeline = Arc::new(Pipeline {
            cfg: pc.clone(),
            tenant_slots: tenant_slots.get(&tenant).cloned(),
            tenant_rate: tenant_rates.get(&tenant).cloned(),
            tenant,
            plugin: plugins[&pc.plugin].clone(),
            route: Arc::new(route),
            backoff: Backoff::from(pc.backoff),
            js: js.clone(),
            client: client.clone(),
            health: health.clone(),
            stats: Stats::new(&metrics, &pc.name, &tenant_name, &pc.plugin),
            breaker: std::sync::Mutex::new(crate::pipeline::breaker::Breaker::new(pc.breaker)),
            shutdown: shutdown.clone(),
            keepalive: Default::default(),
            leaders: leaders.clone(),
            inboxes: inboxes.clone(),
            effects: effects_plan(&config, pc, &backends)?,
            captures: captures.clone(),
        });
        stats.insert(pc.name.clone(), pipeline.stats.clone());
        running.push(pipeline.clone());
        let streams = pc
            .streams
            .iter()
            .filter_map(|s| config.stream(s).cloned())
            .collect();
        tasks.spawn(pipeline.run(streams, shutdown.clone()));
    }
    tokio::spawn(crate::pipeline::watch::run(
        js.clone(),
        config.streams.clone(),
        running.clone(),
        metrics.clone(),
        config.host.stats_interval.0,
        shutdown.clone(),
    ));
    // Advisories are listened to until the last batch is settled.
    let advisories_stop = CancellationToken::new();
    let advisories = tokio::spawn(crate::pipeline::advisories::run(
        running.clone(),
        advisory_stream,
        js.clone(),
        client.clone(),
        advisories_stop.clone(),
    ));
    let _ = admin.pipelines.set(running);
    on_start(HostHandle {
        health: health.clone(),
        stats,
    });

    // Until told to stop, or until a pipeline stops by itself (the server
    // refused its consumer): then the host stops too, with that error.
    let mut failed = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(ended) = tasks.join_next() => if let Ok(Err(e)) = ended {
                failed = Some(e);
                break;
            },
        }
    }
    if failed.is_some() {
        tracing::error!("a pipeline stopped with an error: stopping the host");
        shutdown.cancel();
    }
    tracing::info!("shutting down: finishing in-flight batches");
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(config.host.shutdown_timeout.0, drain)
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.host.shutdown_timeout.0,
            "in-flight batches did not finish in time; their messages will be redelivered");
    }
    advisories_stop.cancel();
    let _ = advisories.await;
    inboxes_stop.cancel();
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "could not flush the last acknowledgements");
    }
    tracing::info!("stopped");
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
