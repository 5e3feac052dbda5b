//! `jetplug.toml` loading: defaults, and every bad value rejected with the
//! file, the key and the reason, before anything connects.

use std::path::Path;
use std::time::Duration;

use jetplug::config::{Config, ConfigError, DeliverPolicy, Retention, Storage};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const GOOD: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"
connect_attempts = 3

[[stream]]
name = "LEARNING"
subjects = ["learning.>"]
max_age = "30d"
max_bytes = "10GB"

[[stream]]
name = "DLQ"
subjects = ["dlq.>"]
storage = "memory"
retention = "interest"

[database.main]
url = "postgres://postgres@127.0.0.1:5432/events"

[plugin.indexer]
path = "noop.wasm"
grants = { sql = ["main"], publish = ["dlq.>"] }
limits = { memory = "32MiB", deadline = "2s" }
config = { table = "events", batch_rows = 500, strict = true }

[[pipeline]]
name = "indexer"
streams = ["LEARNING"]
plugin = "indexer"
max_deliver = 5
deliver = "by_start_sequence"
start_sequence = 10
"#;

fn load(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    let path = dir.join("jetplug.toml");
    std::fs::write(dir.join("noop.wasm"), b"\0asm\x0d\0\x01\0")
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
    Config::load(&path)
}

#[test]
fn good_config_with_defaults() -> TestResult {
    let dir = tempfile::tempdir()?;
    let c = load(dir.path(), GOOD)?;
    assert_eq!(c.nats.connect_attempts, 3);
    assert!(c.nats.reconnect);
    assert_eq!(c.nats.max_reconnect_attempts, 0);
    let s = c.stream("LEARNING").ok_or("stream")?;
    assert_eq!(s.max_age.0, Duration::from_secs(30 * 86400));
    assert_eq!(s.max_bytes.0, 10_000_000_000);
    assert_eq!(s.retention, Retention::Limits);
    assert_eq!(s.storage, Storage::File);
    assert_eq!(s.duplicate_window.0, Duration::from_secs(120));
    assert_eq!(c.stream("DLQ").ok_or("dlq")?.storage, Storage::Memory);
    let p = c.pipeline("indexer").ok_or("pipeline")?;
    assert_eq!(p.ack_wait.0, Duration::from_secs(30));
    assert_eq!(p.batch, 100);
    assert_eq!(p.deliver, DeliverPolicy::ByStartSequence);
    assert_eq!(p.consumer_name("LEARNING"), "jetplug-indexer-LEARNING");
    assert_eq!(
        p.advisory_consumer_name("LEARNING"),
        "jetplug-indexer-LEARNING-advisories"
    );
    let named = load(
        dir.path(),
        &GOOD.replacen(
            "max_deliver = 5",
            "max_deliver = 5\nconsumer = \"indexer\"",
            1,
        ),
    )?;
    let p = named.pipeline("indexer").ok_or("pipeline")?;
    assert_eq!(p.consumer_name("LEARNING"), "indexer");
    assert_eq!(
        p.advisory_consumer_name("LEARNING"),
        "indexer-LEARNING-advisories"
    );
    let spec = jetplug::plugin::PluginSpec::from_config("indexer", &c.plugins["indexer"]);
    assert_eq!(
        spec.path,
        dir.path().join("noop.wasm"),
        "relative to the config file"
    );
    assert_eq!(spec.limits.memory_bytes, 32 << 20);
    assert!(spec.config.contains(&("batch_rows".into(), "500".into())));
    assert!(spec.config.contains(&("strict".into(), "true".into())));
    assert!(spec.grants.allows_database("main"));
    Ok(())
}

#[test]
fn bad_values_name_file_key_and_reason() -> TestResult {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace this, with this, expected key, expected words in reason)
        (
            "connect_attempts = 3",
            "connect_attempts = 3\n[admin]\naddress = \"0.0.0.0:9090\"",
            "admin.address",
            "set admin.token",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = 3\n[admin]\naddress = \"nine\"",
            "admin.address",
            "is not a port",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = 3\n[admin]\ntoken = \"a\"\ntoken_file = \"t\"",
            "admin.token_file",
            "not both",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = 3\ntoken = \"${JETPLUG_SURELY_UNSET_VAR}\"",
            "nats.token",
            "JETPLUG_SURELY_UNSET_VAR is not set",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = 3\ntoken = \"t\"\nuser = \"u\"\npassword = \"p\"",
            "nats.user",
            "one way to authenticate",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = 3\ntls_cert = \"c.pem\"",
            "nats.tls_key",
            "go together",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = 3\nnkey_seed_file = \"missing.nk\"",
            "nats.nkey_seed_file",
            "does not exist",
        ),
        (
            "url = \"postgres://postgres@127.0.0.1:5432/events\"",
            "pool_size = 2",
            "database.main.url",
            "must be given",
        ),
        (
            "url = \"postgres://postgres@127.0.0.1:5432/events\"",
            "url = \"postgres://postgres@h/e\"\npassword_file = \"nowhere\"",
            "database.main.password_file",
            "cannot read",
        ),
        (
            "max_age = \"30d\"",
            "max_age = \"a month\"",
            "stream[0].max_age",
            "invalid duration `a month`",
        ),
        (
            "storage = \"memory\"",
            "storage = \"disk\"",
            "stream[1].storage",
            "unknown variant `disk`",
        ),
        (
            "retention = \"interest\"",
            "retention = \"forever\"",
            "stream[1].retention",
            "unknown variant `forever`",
        ),
        (
            "max_bytes = \"10GB\"",
            "max_bytes = \"huge\"",
            "stream[0].max_bytes",
            "invalid size `huge`",
        ),
        (
            "max_bytes = \"10GB\"",
            "max_bytez = \"10GB\"",
            "stream[0].max_bytez",
            "unknown field `max_bytez`",
        ),
        (
            "connect_attempts = 3",
            "connect_attempts = -1",
            "nats.connect_attempts",
            "invalid value",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"",
            "url = \"nats://a:4222,nats://b:port\"",
            "nats.url[1]",
            "`nats://b:port` is not a NATS server URL",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"",
            "url = [\"nats://a:4222\", \"\"]",
            "nats.url[1]",
            "is empty",
        ),
        (
            "url = \"nats://127.0.0.1:4222\"",
            "url = 4222",
            "nats.url",
            "expected a URL string or a list of URL strings",
        ),
        (
            "streams = [\"LEARNING\"]",
            "streams = [\"NOPE\"]",
            "pipeline[0].streams[0]",
            "`NOPE` is not declared",
        ),
        (
            "plugin = \"indexer\"\nmax",
            "plugin = \"ghost\"\nmax",
            "pipeline[0].plugin",
            "`ghost` is not declared",
        ),
        (
            "path = \"noop.wasm\"",
            "path = \"missing.wasm\"",
            "plugin.indexer.path",
            "does not exist",
        ),
        (
            "name = \"LEARNING\"",
            "name = \"LEARN.ING\"",
            "stream[0].name",
            "contains `.`",
        ),
        (
            "start_sequence = 10",
            "",
            "pipeline[0].start_sequence",
            "required",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\neffects = \"exactly-once\"\neffects_database = \"other\"",
            "pipeline[0].effects_database",
            "database `other` is not declared",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\neffects_database = \"main\"",
            "pipeline[0].effects_database",
            "only used with effects = \"exactly-once\"",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\neffects = \"exactly-once\"\neffects_schema = \"Bad-Name\"",
            "pipeline[0].effects_schema",
            "not a plain SQL name",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\neffects = \"exactly-once\"\neffects_outbox_table = \"ledger\"",
            "pipeline[0].effects_outbox_table",
            "two tables",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\neffects = \"twice\"",
            "pipeline[0].effects",
            "unknown variant `twice`",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 0",
            "pipeline[0].max_deliver",
            "at least 1",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\nconsumer = \"in dexer\"",
            "pipeline[0].consumer",
            "contains ` `",
        ),
        (
            "start_sequence = 10\n",
            "start_sequence = 10\nconsumer = \"jetplug-again-LEARNING\"\n\n\
             [[pipeline]]\nname = \"again\"\nstreams = [\"LEARNING\"]\nplugin = \"indexer\"\n",
            "pipeline[1].consumer",
            "pipelines `indexer` and `again` would both use consumer `jetplug-again-LEARNING` on stream `LEARNING`",
        ),
        (
            "max_deliver = 5",
            "batch = 2000",
            "pipeline[0].max_ack_pending",
            "less than batch",
        ),
        (
            "max_deliver = 5",
            "max_deliver = 5\nbatch_max_bytes = \"40MiB\"",
            "pipeline[0].batch_max_bytes",
            "is more than plugin `indexer`'s limits.memory (33554432 bytes)",
        ),
        (
            "memory = \"32MiB\"",
            "memory = \"2GiB\"",
            "plugin.indexer.limits.memory",
            "exceeds engine.max_memory",
        ),
        (
            "publish = [\"dlq.>\"]",
            "publish = [\"dlq.>.x\"]",
            "plugin.indexer.grants.publish[0]",
            "last token",
        ),
        (
            "subjects = [\"dlq.>\"]",
            "subjects = [\"deadletters.>\"]",
            "pipeline[0].dead_letter",
            "pipeline `indexer` dead-letters messages from `LEARNING` to `dlq.learning.indexer`, \
             which no declared stream captures",
        ),
        (
            "[database.main]",
            "[engine]\nslow_lane_nice = 25\n\n[database.main]",
            "engine.slow_lane_nice",
            "25 is out of range",
        ),
        (
            "[database.main]",
            "[engine]\nslow_lane_threads = 0\n\n[database.main]",
            "engine.slow_lane_threads",
            "at least 1",
        ),
    ];
    for (from, to, key, reason) in cases {
        assert!(GOOD.contains(from), "test case does not apply: {from}");
        let dir = tempfile::tempdir()?;
        let text = GOOD.replacen(from, to, 1);
        let err = load(dir.path(), &text)
            .err()
            .ok_or_else(|| format!("accepted: {to}"))?;
        let msg = err.to_string();
        assert_eq!(err.key(), Some(*key), "{msg}");
        assert!(msg.contains(reason), "{to}: {msg}");
        assert!(msg.contains("jetplug.toml"), "{msg}");
    }
    Ok(())
}

/// `effects = "exactly-once"` needs one database to hold its ledger and
/// no KV grant; each refusal says what to do.
#[test]
fn exactly_once_effects_need_one_database_and_no_kv() -> TestResult {
    let dir = tempfile::tempdir()?;
    let once = GOOD.replacen(
        "max_deliver = 5",
        "max_deliver = 5\neffects = \"exactly-once\"",
        1,
    );
    let c = load(dir.path(), &once)?;
    let p = c.pipeline("indexer").ok_or("pipeline")?;
    assert_eq!(p.effects, jetplug::config::Effects::ExactlyOnce);
    assert_eq!(p.effects_database(&c.plugins["indexer"]), Some("main"));
    assert_eq!(p.effects_schema, "jetplug");
    assert_eq!(p.effects_retention.0, Duration::from_secs(7 * 86400));
    let grants = "grants = { sql = [\"main\"], publish = [\"dlq.>\"] }";
    for (to, key, reason) in [
        (
            "grants = { sql = [\"main\"], kv = [\"b\"] }",
            "pipeline[0].effects",
            "KV writes cannot join the database transaction",
        ),
        (
            "grants = { sql = [\"*\"] }",
            "pipeline[0].effects_database",
            "name the one whose transaction holds its effects",
        ),
        (
            "grants = { publish = [\"dlq.>\"] }",
            "pipeline[0].effects_database",
            "has no sql grant",
        ),
    ] {
        assert!(once.contains(grants));
        let err = load(dir.path(), &once.replacen(grants, to, 1))
            .err()
            .ok_or_else(|| format!("accepted: {to}"))?;
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
    Ok(())
}

#[test]
fn publish_grants_that_match_no_stream_are_warned_about() -> TestResult {
    let dir = tempfile::tempdir()?;
    assert!(load(dir.path(), GOOD)?.warnings().is_empty());
    let text = GOOD.replacen("publish = [\"dlq.>\"]", "publish = [\"orders.>\"]", 1);
    let warnings = load(dir.path(), &text)?.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "plugin.indexer.grants.publish[0]: `orders.>` matches no declared stream's subjects"
        ),
        "{warnings:?}"
    );
    Ok(())
}

#[test]
fn admin_address_port_only_is_loopback_and_open_needs_saying_so() -> TestResult {
    let dir = tempfile::tempdir()?;
    let base = GOOD.replace(
        "connect_attempts = 3",
        "connect_attempts = 3\n[admin]\naddress = \"9091\"",
    );
    let c = load(dir.path(), &base)?;
    assert_eq!(
        c.admin.address.map(|a| a.0.to_string()).as_deref(),
        Some("127.0.0.1:9091")
    );
    let open = GOOD.replace(
        "connect_attempts = 3",
        "connect_attempts = 3\n[admin]\naddress = \"0.0.0.0:9091\"\nallow_unauthenticated = true",
    );
    assert!(load(dir.path(), &open)?.admin.allow_unauthenticated);
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "from-a-file-123\n")?;
    let guarded = GOOD.replace(
        "connect_attempts = 3",
        &format!(
            "connect_attempts = 3\n[admin]\naddress = \"0.0.0.0:9091\"\ntoken_file = {:?}",
            file.display().to_string()
        ),
    );
    let c = load(dir.path(), &guarded)?;
    assert_eq!(
        c.admin.token.as_ref().map(|t| t.expose()),
        Some("from-a-file-123")
    );
    assert!(
        !format!("{c:?}").contains("from-a-file-123"),
        "Debug masks secrets"
    );
    Ok(())
}

#[test]
fn parse_errors_carry_the_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = GOOD.replacen("max_age = \"30d\"", "max_age = \"a month\"", 1);
    let msg = load(dir.path(), &text).err().ok_or("accepted")?.to_string();
    let line = text
        .lines()
        .position(|l| l.contains("a month"))
        .ok_or("line")?
        + 1;
    assert!(msg.contains(&format!("jetplug.toml:{line}:")), "{msg}");

    let msg = load(dir.path(), "[nats\nurl = 1")
        .err()
        .ok_or("accepted")?
        .to_string();
    assert!(msg.contains("jetplug.toml:1:"), "{msg}");
    Ok(())
}

#[test]
fn missing_file_is_named() {
    let err = Config::load(Path::new("/nonexistent/jetplug.toml")).err();
    assert!(matches!(err, Some(ConfigError::Read { .. })));
}

const TENANTS: &str = r#"
[tenant.acme]
consume = ["learning.{tenant}.>"]
publish = ["dlq.{tenant}.>"]
databases = ["main"]
limits = { memory = "32MiB", max_concurrent_batches = 2 }
"#;

fn with_tenant(text: &str) -> String {
    format!("{text}{TENANTS}")
        .replace("subjects = [\"learning.>\"]", "subjects = [\"learning.>\"]")
        .replace(
            "path = \"noop.wasm\"",
            "path = \"noop.wasm\"\ntenant = \"acme\"",
        )
        .replace("publish = [\"dlq.>\"]", "publish = [\"dlq.{tenant}.x\"]")
        .replace(
            "plugin = \"indexer\"\n",
            "plugin = \"indexer\"\nfilter_subjects = [\"learning.{tenant}.>\"]\n",
        )
}

#[test]
fn tenants_bound_pipelines_and_grants() -> TestResult {
    let dir = tempfile::tempdir()?;
    let c = load(dir.path(), &with_tenant(GOOD))?;
    assert_eq!(
        c.plugins["indexer"].grants.publish,
        vec!["dlq.acme.x".to_owned()],
        "{{tenant}} expanded"
    );
    assert_eq!(
        c.pipelines[0].filter_subjects,
        vec!["learning.acme.>".to_owned()]
    );
    assert_eq!(
        c.tenants["acme"].consume,
        vec!["learning.acme.>".to_owned()]
    );

    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "filter_subjects = [\"learning.{tenant}.>\"]\n",
            "",
            "pipeline[0].streams[0]",
            "outside tenant `acme`",
        ),
        (
            "publish = [\"dlq.{tenant}.x\"]",
            "publish = [\"dlq.other.x\"]",
            "plugin.indexer.grants.publish[0]",
            "outside tenant `acme`",
        ),
        (
            "memory = \"32MiB\", deadline",
            "memory = \"48MiB\", deadline",
            "plugin.indexer.limits.memory",
            "exceeds tenant `acme`",
        ),
        (
            "tenant = \"acme\"",
            "tenant = \"nobody\"",
            "plugin.indexer.tenant",
            "`nobody` is not declared",
        ),
        (
            "databases = [\"main\"]",
            "databases = []",
            "plugin.indexer.grants.sql[0]",
            "outside tenant `acme`",
        ),
        (
            "max_concurrent_batches = 2",
            "max_concurrent_batches = 2, max_messages_per_second = 0",
            "tenant.acme.limits.max_messages_per_second",
            "at least 1",
        ),
    ];
    for (from, to, key, reason) in cases {
        let base = with_tenant(GOOD);
        assert!(base.contains(from), "test case does not apply: {from}");
        let err = load(dir.path(), &base.replacen(from, to, 1))
            .err()
            .ok_or_else(|| format!("accepted: {to}"))?;
        assert_eq!(err.key(), Some(*key), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
    Ok(())
}

#[test]
fn nats_url_takes_one_server_a_comma_list_or_a_toml_list() -> TestResult {
    let dir = tempfile::tempdir()?;
    let servers = [
        "nats://127.0.0.1:4222",
        "nats://127.0.0.1:4223",
        "nats://127.0.0.1:4224",
    ];
    for form in [
        r#"url = "nats://127.0.0.1:4222,nats://127.0.0.1:4223, nats://127.0.0.1:4224""#,
        r#"url = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]"#,
    ] {
        let c = load(
            dir.path(),
            &GOOD.replace(r#"url = "nats://127.0.0.1:4222""#, form),
        )?;
        assert_eq!(c.nats.url.0, servers, "{form}");
    }
    let c = load(dir.path(), GOOD)?;
    assert_eq!(c.nats.url.0, ["nats://127.0.0.1:4222"]);
    Ok(())
}
