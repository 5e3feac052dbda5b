//! Stream provisioning: create what is missing, reconcile what drifted.
//!
//! Editable fields (subjects, limits, duplicate window, replicas,
//! compression, discard) are updated in place. `storage` and `retention`
//! cannot be changed on a live stream: such a drift is reported as refused
//! and the existing stream is used as it is. If JetStream refuses an update
//! anyway (say, subjects that overlap another stream's), that is logged as a warning and
//! the existing stream is used.
//!
//! A stream declared with `manage = false` belongs to someone else: it is
//! only checked. Missing, it is an error (the host waits for it); drifted,
//! the differences are logged and nothing is changed.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::config::{self, StreamConfig};

/// One field that differs between the server and the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub field: &'static str,
    pub current: String,
    pub wanted: String,
    /// False when JetStream cannot change the field on an existing stream.
    pub editable: bool,
}

/// What reconciling one stream does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Create,
    Unchanged,
    /// The stream exists and differs.
    Update(Vec<Change>),
    /// `manage = false`: the stream exists and is used as it is; these are
    /// its differences from the declaration (none: it matches).
    Unmanaged(Vec<Change>),
}

/// The plan for one stream.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub name: String,
    pub plan: Plan,
    desired: stream::Config,
    current: Option<stream::Config>,
}

/// How applying a plan went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Created,
    Unchanged,
    /// `manage = false`: checked, not changed; the differences found.
    Checked {
        differences: Vec<Change>,
    },
    Updated {
        refused: Vec<Change>,
    },
    /// JetStream refused the update; the existing stream is used.
    UpdateRefused {
        reason: String,
    },
}

/// Talking to JetStream failed (not a refused change).
#[derive(Debug, thiserror::Error)]
#[error("stream `{stream}`: {reason}")]
pub struct StreamError {
    pub stream: String,
    pub reason: String,
}

/// The stream configuration JetStream should have for `cfg`.
pub fn desired(cfg: &StreamConfig) -> stream::Config {
    let limit = |n: u64| {
        if n == 0 {
            -1
        } else {
            i64::try_from(n).unwrap_or(i64::MAX)
        }
    };
    stream::Config {
        name: cfg.name.clone(),
        subjects: cfg.subjects.clone(),
        retention: match cfg.retention {
            config::Retention::Limits => stream::RetentionPolicy::Limits,
            config::Retention::Interest => stream::RetentionPolicy::Interest,
            config::Retention::Workqueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: match cfg.storage {
            config::Storage::File => stream::StorageType::File,
            config::Storage::Memory => stream::StorageType::Memory,
        },
        discard: match cfg.discard {
            config::Discard::Old => stream::DiscardPolicy::Old,
            config::Discard::New => stream::DiscardPolicy::New,
        },
        max_age: cfg.max_age.0,
        max_bytes: limit(cfg.max_bytes.0),
        max_messages: limit(cfg.max_messages),
        max_messages_per_subject: limit(cfg.max_messages_per_subject),
        duplicate_window: effective_duplicate_window(cfg),
        num_replicas: usize::from(cfg.replicas),
        compression: Some(match cfg.compression {
            config::Compression::None => stream::Compression::None,
            config::Compression::S2 => stream::Compression::S2,
        }),
        allow_direct: true,
        ..Default::default()
    }
}

/// JetStream caps the duplicate window at max_age.
fn effective_duplicate_window(cfg: &StreamConfig) -> Duration {
    if cfg.max_age.0.is_zero() {
        cfg.duplicate_window.0
    } else {
        cfg.duplicate_window.0.min(cfg.max_age.0)
    }
}

fn diff(current: &stream::Config, desired: &stream::Config) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut check = |field, cur: String, want: String, editable| {
        if cur != want {
            changes.push(Change {
                field,
                current: cur,
                wanted: want,
                editable,
            });
        }
    };
    let mut cur_subjects = current.subjects.clone();
    let mut want_subjects = desired.subjects.clone();
    cur_subjects.sort();
    want_subjects.sort();
    check(
        "subjects",
        format!("{cur_subjects:?}"),
        format!("{want_subjects:?}"),
        true,
    );
    check(
        "retention",
        format!("{:?}", current.retention),
        format!("{:?}", desired.retention),
        false,
    );
    check(
        "storage",
        format!("{:?}", current.storage),
        format!("{:?}", desired.storage),
        false,
    );
    check(
        "discard",
        format!("{:?}", current.discard),
        format!("{:?}", desired.discard),
        true,
    );
    check("max_age", dur(current.max_age), dur(desired.max_age), true);
    check(
        "max_bytes",
        lim(current.max_bytes),
        lim(desired.max_bytes),
        true,
    );
    check(
        "max_messages",
        lim(current.max_messages),
        lim(desired.max_messages),
        true,
    );
    check(
        "max_messages_per_subject",
        lim(current.max_messages_per_subject),
        lim(desired.max_messages_per_subject),
        true,
    );
    check(
        "duplicate_window",
        dur(current.duplicate_window),
        dur(desired.duplicate_window),
        true,
    );
    check(
        "replicas",
        current.num_replicas.to_string(),
        desired.num_replicas.to_string(),
        true,
    );
    let comp = |c: &Option<stream::Compression>| match c {
        Some(stream::Compression::S2) => "s2".to_owned(),
        _ => "none".to_owned(),
    };
    check(
        "compression",
        comp(&current.compression),
        comp(&desired.compression),
        true,
    );
    changes
}

fn dur(d: Duration) -> String {
    if d.is_zero() {
        "unlimited".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn lim(n: i64) -> String {
    if n < 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

/// Compares every configured stream with the server.
pub async fn plan(
    js: &jetstream::Context,
    streams: &[StreamConfig],
) -> Result<Vec<StreamPlan>, StreamError> {
    let mut plans = Vec::with_capacity(streams.len());
    for cfg in streams {
        let desired = desired(cfg);
        let err = |reason: String| StreamError {
            stream: cfg.name.clone(),
            reason,
        };
        let (plan, current) = match js.get_stream(&cfg.name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| err(e.to_string()))?;
                let changes = diff(&info.config, &desired);
                let plan = if !cfg.manage {
                    Plan::Unmanaged(changes)
                } else if changes.is_empty() {
                    Plan::Unchanged
                } else {
                    Plan::Update(changes)
                };
                (plan, Some(info.config.clone()))
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(je)
                    if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                if !cfg.manage {
                    return Err(err(format!(
                        "does not exist, and `manage = false` says it is owned elsewhere, so \
                         jetplug does not create it: create it (e.g. `nats stream add {}`) or \
                         set manage = true",
                        cfg.name
                    )));
                }
                (Plan::Create, None)
            }
            Err(e) => return Err(err(e.to_string())),
        };
        plans.push(StreamPlan {
            name: cfg.name.clone(),
            plan,
            desired,
            current,
        });
    }
    Ok(plans)
}

/// Applies one plan; refused changes are logged and the existing stream used.
pub async fn apply(js: &jetstream::Context, plan: &StreamPlan) -> Result<Applied, StreamError> {
    let err = |reason: String| StreamError {
        stream: plan.name.clone(),
        reason,
    };
    match (&plan.plan, &plan.current) {
        (Plan::Unchanged, _) => Ok(Applied::Unchanged),
        (Plan::Unmanaged(differences), _) => {
            for c in differences {
                tracing::warn!(stream = %plan.name, field = c.field, current = %c.current, declared = %c.wanted,
                    "stream differs from its declaration; manage = false, so it is used as it is");
            }
            Ok(Applied::Checked {
                differences: differences.clone(),
            })
        }
        (Plan::Create, _) | (Plan::Update(_), None) => {
            js.create_stream(plan.desired.clone())
                .await
                .map_err(|e| err(e.to_string()))?;
            tracing::info!(stream = %plan.name, "stream created");
            Ok(Applied::Created)
        }
        (Plan::Update(changes), Some(current)) => {
            let refused: Vec<Change> = changes.iter().filter(|c| !c.editable).cloned().collect();
            for c in &refused {
                tracing::warn!(stream = %plan.name, field = c.field, current = %c.current, wanted = %c.wanted,
                    "JetStream cannot change this field on an existing stream; using the existing value");
            }
            if refused.len() == changes.len() {
                return Ok(Applied::Updated { refused });
            }
            let mut update = current.clone();
            let d = &plan.desired;
            update.subjects = d.subjects.clone();
            update.discard = d.discard;
            update.max_age = d.max_age;
            update.max_bytes = d.max_bytes;
            update.max_messages = d.max_messages;
            update.max_messages_per_subject = d.max_messages_per_subject;
            update.duplicate_window = d.duplicate_window;
            update.num_replicas = d.num_replicas;
            update.compression = d.compression.clone();
            match js.update_stream(update).await {
                Ok(_) => {
                    for c in changes.iter().filter(|c| c.editable) {
                        tracing::info!(stream = %plan.name, field = c.field, from = %c.current, to = %c.wanted,
                            "stream updated");
                    }
                    Ok(Applied::Updated { refused })
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::warn!(stream = %plan.name, error = %reason,
                        "JetStream refused the stream update; using the existing stream");
                    Ok(Applied::UpdateRefused { reason })
                }
            }
        }
    }
}

/// Plans and applies every stream.
pub async fn reconcile(
    js: &jetstream::Context,
    streams: &[StreamConfig],
) -> Result<Vec<(String, Applied)>, StreamError> {
    let mut out = Vec::new();
    for plan in plan(js, streams).await? {
        let applied = apply(js, &plan).await?;
        out.push((plan.name.clone(), applied));
    }
    Ok(out)
}

impl fmt::Display for StreamPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.plan {
            Plan::Create => write!(f, "+ {}: create", self.name),
            Plan::Unchanged => write!(f, "= {}: up to date", self.name),
            Plan::Unmanaged(differences) if differences.is_empty() => {
                write!(f, "= {}: not managed (manage = false); matches", self.name)
            }
            Plan::Unmanaged(differences) => {
                write!(
                    f,
                    "! {}: not managed (manage = false); differs, left as it is",
                    self.name
                )?;
                for c in differences {
                    write!(
                        f,
                        "\n    {}: {} (declared {})",
                        c.field, c.current, c.wanted
                    )?;
                }
                Ok(())
            }
            Plan::Update(changes) => {
                write!(f, "~ {}: update", self.name)?;
                for c in changes {
                    write!(f, "\n    {}: {} -> {}", c.field, c.current, c.wanted)?;
                    if !c.editable {
                        write!(
                            f,
                            "  (refused: cannot change on an existing stream; existing value kept)"
                        )?;
                    }
                }
                Ok(())
            }
        }
    }
}
