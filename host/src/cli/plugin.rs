//! `jetplug plugin list|deploy|rollback|history|promote|abort|canary`.
//!
//! `list` reads a running host's admin API. `deploy` validates a component
//! against the plugin's configuration (compile, grants) and then hands it to
//! every host through the fleet buckets; `rollback` re-announces the previous
//! version; `history` shows what was announced.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::engine::Runtime;
use crate::hotswap::fleet::{Announcement, Fleet};
use crate::hotswap::rollout::Outcome;
use crate::hotswap::short;
use crate::hotswap::signing;
use crate::plugin::PluginSpec;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show the loaded plugins: name, tenant, version hash, loaded-at, imports.
    List(Target),
    /// Validate FILE as a new version of plugin NAME and roll it out to every
    /// host using this configuration (no restart; in-flight batches finish
    /// on the old version).
    Deploy {
        /// The plugin's name (`[plugin.NAME]` in the configuration).
        name: String,
        /// The new component (.wasm).
        file: PathBuf,
        /// Sign it with this key (`jetplug plugin keygen`); without it, a
        /// `FILE.sig` made by `plugin sign` is used when there is one.
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        canary: super::canary::CanaryArgs,
        #[command(flatten)]
        shadow: super::canary::ShadowArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Plugin NAME's current or last shadow: messages compared, agreement,
    /// disagreements by kind with examples, each version's errors, p99 and
    /// memory — merged over every host.
    Shadow {
        name: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Promote plugin NAME's running canary now: its version becomes the
    /// running one on every host.
    Promote {
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Abort plugin NAME's running canary: every message goes to the
    /// running version again.
    Abort {
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Plugin NAME's current or last canary: its share, rules, and how it
    /// ended and why.
    Canary {
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Make a signing key pair: the secret key goes to FILE (mode 0600), the
    /// public key (for `host.trusted_keys`) is printed.
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a component with a key from `plugin keygen`: writes FILE.sig,
    /// which `plugin deploy` sends along (sign offline, deploy elsewhere).
    Sign {
        /// The component (.wasm).
        file: PathBuf,
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Return plugin NAME to the version it ran before the last deploy
    /// (past the first deploy: the file the configuration names).
    Rollback {
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// The versions announced for plugin NAME, oldest first.
    History {
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
    },
}

#[derive(Debug, clap::Args)]
struct FleetArgs {
    /// The configuration file (NATS connection, plugin grants, deploy bucket).
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The configuration file (its `[admin] address` is used).
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// The admin address to ask instead, e.g. `127.0.0.1:9090`.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Print the JSON as the host returns it.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::List(t) => list(t).await,
        Action::Deploy {
            name,
            file,
            key,
            canary,
            shadow,
            fleet,
        } => deploy(&name, &file, key.as_deref(), (&canary, &shadow), &fleet).await,
        Action::Shadow { name, json, fleet } => {
            let (_, f) = open(&name, &fleet).await?;
            super::canary::show_shadow(&f, &name, json).await
        }
        Action::Promote { name, fleet } => {
            let (_, f) = open(&name, &fleet).await?;
            super::canary::end(&f, &name, Outcome::Promoted).await
        }
        Action::Abort { name, fleet } => {
            let (_, f) = open(&name, &fleet).await?;
            super::canary::end(&f, &name, Outcome::Aborted).await
        }
        Action::Canary { name, fleet } => {
            let (_, f) = open(&name, &fleet).await?;
            super::canary::show(&f, &name).await
        }
        Action::Keygen { out } => keygen(&out),
        Action::Sign { file, key } => sign(&file, &key),
        Action::Rollback { name, fleet } => {
            let (_, f) = open(&name, &fleet).await?;
            let ann = f.rollback(&name).await?;
            println!("rolled back plugin `{name}` to {}", describe(&ann));
            println!("running hosts swap to it within seconds; check with `jetplug plugin list`");
            Ok(ExitCode::SUCCESS)
        }
        Action::History { name, fleet } => {
            let (_, f) = open(&name, &fleet).await?;
            let history = f.history(&name).await?;
            if history.is_empty() {
                println!("plugin `{name}` was never deployed: hosts run the configured file");
            }
            // Versions (the running one starred) and canary events, by time.
            let mut lines: Vec<(String, String)> = history
                .iter()
                .enumerate()
                .map(|(i, ann)| {
                    let at = match ann {
                        Announcement::Store { deployed_at, .. }
                        | Announcement::File { deployed_at } => deployed_at,
                    };
                    let mark = if i + 1 == history.len() { "*" } else { " " };
                    (at.clone(), format!("{mark} {at}  {}", describe(ann)))
                })
                .collect();
            for (at, what) in super::canary::events(&f, &name).await? {
                lines.push((at.clone(), format!("  {at}  {what}")));
            }
            lines.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, line) in lines {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (secret, public) = signing::generate().map_err(anyhow::Error::msg)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never overwritten)",
                out.display()
            )
        })?;
    writeln!(f, "{secret}").with_context(|| format!("cannot write {}", out.display()))?;
    println!("secret key written to {} (keep it private)", out.display());
    println!("public key (for host.trusted_keys):");
    println!("{public}");
    Ok(ExitCode::SUCCESS)
}

fn sign(file: &std::path::Path, key: &std::path::Path) -> anyhow::Result<ExitCode> {
    let key = signing::load_key(key).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read plugin file {}", file.display()))?;
    let sig = signing::sign(&key, &crate::engine::cache::content_hash(&bytes));
    let out = sig_path(file);
    std::fs::write(&out, serde_json::to_string_pretty(&sig)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "signed {} with {}: {}",
        file.display(),
        sig.key,
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn sig_path(file: &std::path::Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// The signature to deploy `bytes` with: made with `key`, or read from
/// `FILE.sig`; checked against the configuration's `trusted_keys` so a
/// version every host would refuse is refused here.
fn signature_for(
    config: &Config,
    file: &std::path::Path,
    bytes: &[u8],
    key: Option<&std::path::Path>,
) -> anyhow::Result<Option<signing::Signature>> {
    let hash = crate::engine::cache::content_hash(bytes);
    let sig = match key {
        Some(k) => Some(signing::sign(
            &signing::load_key(k).map_err(anyhow::Error::msg)?,
            &hash,
        )),
        None => {
            let path = sig_path(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a signature file", path.display()))?,
                ),
                Err(_) => None,
            }
        }
    };
    let trusted = crate::host::resolve::resolve(config)?.trusted;
    if !trusted.is_empty()
        && let Err(refusal) = signing::verify(&trusted, &hash, sig.as_ref())
    {
        bail!(
            "{} would be refused by hosts using this configuration: {refusal} (sign it with `--key`)",
            file.display()
        );
    }
    Ok(sig)
}

async fn deploy(
    name: &str,
    file: &std::path::Path,
    key: Option<&std::path::Path>,
    (canary, shadow): (&super::canary::CanaryArgs, &super::canary::ShadowArgs),
    args: &FleetArgs,
) -> anyhow::Result<ExitCode> {
    let config = crate::host::resolve::load(&args.config)?;
    let pc = plugin_config(&config, name, &args.config)?;
    let bytes = std::fs::read(file)
        .with_context(|| format!("cannot read plugin file {}", file.display()))?;
    // Refuse here what every host would refuse: not a component, wrong
    // world, imports beyond the grants. (`init` runs on each host.)
    let runtime = std::sync::Arc::new(Runtime::new(crate::engine::EngineSettings::from(
        &config.engine,
    ))?);
    let mut spec = PluginSpec::from_config(name, pc);
    spec.path = file.to_path_buf();
    let plugin = crate::plugin::load_bytes(
        &runtime,
        spec,
        &bytes,
        crate::capability::Backends::offline(),
    )
    .with_context(|| format!("{} is not a valid new version of `{name}`", file.display()))?;
    let signature = signature_for(&config, file, &bytes, key)?;
    let (_, fleet) = open(name, args).await?;
    if let Some(key) = crate::hotswap::artifacts::fleet_key(&config.engine, &runtime) {
        share_compiled(&fleet.artifacts(key, runtime.clone()), &plugin).await;
    }
    if shadow.shadow {
        return super::canary::start_shadow(&fleet, name, &bytes, signature, shadow).await;
    }
    if let Some(percent) = canary.canary {
        return super::canary::start(&fleet, name, &bytes, signature, canary, percent).await;
    }
    let ann = fleet.deploy(name, &bytes, signature).await?;
    println!("deployed plugin `{name}`: {}", describe(&ann));
    println!("running hosts swap to it within seconds; check with `jetplug plugin list`");
    Ok(ExitCode::SUCCESS)
}

/// Shares the new version's compiled code, so hosts swap to it without
/// compiling (`engine.fleet_cache_key`); a failure only costs them a compile.
async fn share_compiled(
    artifacts: &crate::hotswap::artifacts::Artifacts,
    plugin: &crate::plugin::Plugin,
) {
    match artifacts.share(plugin).await {
        Ok(true) => {
            println!("compiled code shared with the fleet: hosts load it without compiling")
        }
        Ok(false) => println!("compiled code already shared with the fleet"),
        Err(e) => eprintln!("warning: compiled code not shared ({e}); each host compiles it"),
    }
}

fn plugin_config<'a>(
    config: &'a Config,
    name: &str,
    path: &std::path::Path,
) -> anyhow::Result<&'a crate::config::PluginConfig> {
    config.plugins.get(name).with_context(|| {
        let known: Vec<&str> = config.plugins.keys().map(String::as_str).collect();
        format!(
            "{} declares no plugin `{name}` (declared: {})",
            path.display(),
            known.join(", ")
        )
    })
}

async fn open(name: &str, args: &FleetArgs) -> anyhow::Result<(Config, Fleet)> {
    let config = crate::host::resolve::load(&args.config)?;
    plugin_config(&config, name, &args.config)?;
    let bucket = config.host.deploy_bucket.clone();
    if bucket.is_empty() {
        bail!(
            "{} turns fleet deploys off (host.deploy_bucket = \"\")",
            args.config.display()
        );
    }
    let js = super::connect_once(&config.nats).await?;
    let fleet = Fleet::open(&js, &bucket).await?;
    Ok((config, fleet))
}

fn describe(ann: &Announcement) -> String {
    match ann {
        Announcement::Store { hash, size, .. } => {
            format!("version {} ({size} bytes)", short(hash))
        }
        Announcement::File { .. } => "the file named in the configuration".into(),
    }
}

async fn list(t: Target) -> anyhow::Result<ExitCode> {
    // The token comes from the configuration when it can be read.
    let config = match t.admin {
        Some(_) => crate::host::resolve::load(&t.config).ok(),
        None => Some(crate::host::resolve::load(&t.config)?),
    };
    let addr = match (t.admin, config.as_ref().and_then(|c| c.admin.address)) {
        (Some(a), _) => a,
        (None, Some(a)) => a.0,
        (None, None) => anyhow::bail!(
            "{} has no [admin] address; give --admin",
            t.config.display()
        ),
    };
    let token = config.as_ref().and_then(|c| c.admin.token.as_ref());
    let body = crate::admin::client::get(addr, "/v1/plugins", token).await?;
    if t.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the admin API answered something that is not JSON")?;
    println!(
        "{:<20} {:<12} {:<14} {:<22} imports",
        "plugin", "tenant", "hash", "loaded at"
    );
    for p in v["plugins"].as_array().into_iter().flatten() {
        let s = |k: &str| p[k].as_str().unwrap_or("").to_owned();
        let imports: Vec<&str> = p["imports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str())
            .collect();
        let hash = s("hash");
        println!(
            "{:<20} {:<12} {:<14} {:<22} {}",
            s("name"),
            s("tenant"),
            &hash[..hash.len().min(12)],
            s("loaded_at"),
            imports.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}
