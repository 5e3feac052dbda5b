//! NATS authentication and TLS against real nats-servers that require them
//! (certificates made here with rcgen): token, user/password, NKey seed,
//! TLS with server verification, mutual TLS and `tls_required`. A refusal
//! (wrong credentials, wrong CA, missing client certificate, bad seed) ends
//! the start with an error naming the key to check — the host does not
//! retry it forever like an outage.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jetplug::config::Config;
use jetplug::jetstream::{self, Health};
use jetplug_tests::{NatsServer, TestCa, output_text};

/// Longer than any refusal takes; a start that retries runs into it.
const REFUSAL_WITHIN: Duration = Duration::from_secs(20);

/// Connects with the `[nats]` section `nats` (retrying forever, as `run`
/// does by default): Ok, or the error's text.
async fn connect(dir: &Path, nats: &str) -> Result<(), String> {
    let path = dir.join("jetplug.toml");
    let text = format!("[nats]\n{nats}\n");
    std::fs::write(&path, &text).map_err(|e| e.to_string())?;
    let config = Config::load(&path).map_err(|e| e.to_string())?;
    let health = Health::new();
    let attempt = jetstream::connect(&config.nats, &health);
    match tokio::time::timeout(REFUSAL_WITHIN, attempt).await {
        Err(_) => Err("still retrying: a refusal was treated as an outage".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(client)) => {
            // The connection works for real: a JetStream request answers.
            async_nats::jetstream::new(client)
                .query_account()
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    }
}

fn refused(r: Result<(), String>, key: &str) {
    match r {
        Ok(()) => panic!("connected, but `{key}` is wrong"),
        Err(e) => assert!(e.contains(key), "the error names `{key}`: {e}"),
    }
}

fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[tokio::test]
async fn token_and_user_password() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let token = NatsServer::start_with("authorization { token: \"t0ken-abc-123\" }").await?;
    let url = format!("url = \"{}\"", token.url());
    connect(dir.path(), &format!("{url}\ntoken = \"t0ken-abc-123\""))
        .await
        .map_err(anyhow::Error::msg)?;
    let file = dir.path().join("token");
    std::fs::write(&file, "t0ken-abc-123\n")?;
    connect(
        dir.path(),
        &format!("{url}\ntoken_file = {}", quoted(&file)),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    refused(
        connect(dir.path(), &format!("{url}\ntoken = \"wrong-token\"")).await,
        "nats.token",
    );
    refused(connect(dir.path(), &url).await, "no credentials configured");

    let users =
        NatsServer::start_with("authorization { user: \"app\", password: \"pw-12345-xyz\" }")
            .await?;
    let url = format!("url = \"{}\"", users.url());
    connect(
        dir.path(),
        &format!("{url}\nuser = \"app\"\npassword = \"pw-12345-xyz\""),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    refused(
        connect(
            dir.path(),
            &format!("{url}\nuser = \"app\"\npassword = \"nope-nope\""),
        )
        .await,
        "nats.user",
    );
    // Half a pair is a configuration error, before anything connects.
    refused(
        connect(dir.path(), &format!("{url}\nuser = \"app\"")).await,
        "nats.password",
    );
    Ok(())
}

#[tokio::test]
async fn nkey_seed_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = NatsServer::start_with(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    ))
    .await?;
    let url = format!("url = \"{}\"", server.url());
    let good = dir.path().join("user.nk");
    std::fs::write(&good, format!("{seed}\n"))?;
    connect(
        dir.path(),
        &format!("{url}\nnkey_seed_file = {}", quoted(&good)),
    )
    .await
    .map_err(anyhow::Error::msg)?;

    // Another user's seed: the server refuses it.
    let other = dir.path().join("other.nk");
    let other_seed = nkeys::KeyPair::new_user()
        .seed()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::write(&other, other_seed)?;
    refused(
        connect(
            dir.path(),
            &format!("{url}\nnkey_seed_file = {}", quoted(&other)),
        )
        .await,
        "nats.nkey_seed_file",
    );
    // Not a seed at all: the configuration is refused.
    let bad = dir.path().join("bad.nk");
    std::fs::write(&bad, "SUNOTASEED")?;
    let err = connect(
        dir.path(),
        &format!("{url}\nnkey_seed_file = {}", quoted(&bad)),
    )
    .await;
    refused(err.clone(), "nats.nkey_seed_file");
    assert!(
        err.err()
            .unwrap_or_default()
            .contains("not a valid NKey seed")
    );
    Ok(())
}

#[tokio::test]
async fn tls_server_verification_and_tls_required() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("jetplug test CA")?;
    let server_cert = ca.issue("server", &["localhost", "127.0.0.1"])?;
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: {}, key_file: {} }}",
        quoted(&server_cert.cert),
        quoted(&server_cert.key)
    ))
    .await?;
    let url = format!("url = \"tls://127.0.0.1:{}\"", server.port());
    connect(
        dir.path(),
        &format!(
            "{url}\ntls_ca = {}\ntls_required = true",
            quoted(&ca.ca_file())
        ),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    // A CA that did not sign the server's certificate.
    let stranger = TestCa::new("another CA")?;
    refused(
        connect(
            dir.path(),
            &format!("{url}\ntls_ca = {}", quoted(&stranger.ca_file())),
        )
        .await,
        "nats.tls_ca",
    );
    // A plain server when TLS is required.
    let plain = NatsServer::start().await?;
    refused(
        connect(
            dir.path(),
            &format!("url = \"{}\"\ntls_required = true", plain.url()),
        )
        .await,
        "nats.tls_required",
    );
    Ok(())
}

#[tokio::test]
async fn mutual_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("jetplug test CA")?;
    let server_cert = ca.issue("server", &["localhost", "127.0.0.1"])?;
    let client = ca.issue("client", &["jetplug-host"])?;
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true }}",
        quoted(&server_cert.cert),
        quoted(&server_cert.key),
        quoted(&ca.ca_file())
    ))
    .await?;
    let base = format!(
        "url = \"tls://127.0.0.1:{}\"\ntls_ca = {}",
        server.port(),
        quoted(&ca.ca_file())
    );
    connect(
        dir.path(),
        &format!(
            "{base}\ntls_cert = {}\ntls_key = {}",
            quoted(&client.cert),
            quoted(&client.key)
        ),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    // No client certificate: the server ends the handshake.
    refused(connect(dir.path(), &base).await, "nats.tls");
    // A client certificate from a CA the server does not trust.
    let stranger = TestCa::new("another CA")?.issue("client", &["intruder"])?;
    refused(
        connect(
            dir.path(),
            &format!(
                "{base}\ntls_cert = {}\ntls_key = {}",
                quoted(&stranger.cert),
                quoted(&stranger.key)
            ),
        )
        .await,
        "nats.tls",
    );
    Ok(())
}

/// `jetplug run` ends (exit 1) on a refused token, naming the key, though
/// it is told to retry the connection forever; a token from the
/// environment works with a one-shot command.
#[tokio::test]
async fn run_ends_on_a_refusal_and_reads_the_token_from_the_environment() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start_with("authorization { token: \"env-t0ken-777\" }").await?;
    let path = dir.path().join("jetplug.toml");
    std::fs::write(
        &path,
        format!(
            "[nats]\nurl = \"{}\"\ntoken = \"${{JETPLUG_TEST_TOKEN}}\"\nconnect_attempts = 0\n\n[[stream]]\nname = \"EVENTS\"\nsubjects = [\"events.>\"]\n",
            server.url()
        ),
    )?;
    let jetplug = |token: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_jetplug"))
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("JETPLUG_TEST_TOKEN", token)
            .output()
    };
    let ok = jetplug("env-t0ken-777", &["streams", "apply"])?;
    assert!(ok.status.success(), "{}", output_text(&ok));
    let started = std::time::Instant::now();
    let wrong = jetplug("wrong-t0ken-000", &["run"])?;
    let text = output_text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{text}");
    assert!(text.contains("nats.token"), "{text}");
    assert!(
        started.elapsed() < REFUSAL_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        !text.contains("wrong-t0ken-000"),
        "the token is masked: {text}"
    );
    // NATS_TOKEN, when the file names no credentials.
    let bare = dir.path().join("bare.toml");
    std::fs::write(
        &bare,
        format!("[nats]\nurl = \"{}\"\nconnect_attempts = 0\n", server.url()),
    )?;
    let with_env = |token: &str| {
        Command::new(env!("CARGO_BIN_EXE_jetplug"))
            .args(["streams", "diff", "--config"])
            .arg(&bare)
            .env("NATS_TOKEN", token)
            .env_remove("NATS_CREDS")
            .output()
    };
    let ok = with_env("env-t0ken-777")?;
    assert!(ok.status.success(), "{}", output_text(&ok));
    let wrong = with_env("wrong-t0ken-000")?;
    let text = output_text(&wrong);
    assert_eq!(wrong.status.code(), Some(1), "{text}");
    assert!(text.contains("NATS_TOKEN (environment)"), "{text}");
    assert!(!text.contains("wrong-t0ken-000"), "masked: {text}");
    // Unset: a configuration error naming the variable.
    let unset = Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("JETPLUG_TEST_TOKEN")
        .output()?;
    let text = output_text(&unset);
    assert!(
        text.contains("nats.token") && text.contains("JETPLUG_TEST_TOKEN is not set"),
        "{text}"
    );
    Ok(())
}

/// A JWT for `claims`, signed by `issuer` (the NATS JWT v2 encoding).
fn jwt(issuer: &nkeys::KeyPair, claims: serde_json::Value) -> anyhow::Result<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64.encode(serde_json::to_vec(&claims)?);
    let signing_input = format!("{header}.{body}");
    let sig = issuer
        .sign(signing_input.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(format!("{signing_input}.{}", b64.encode(sig)))
}

fn claims(name: &str, iss: &str, sub: &str, nats: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "jti": format!("{name}{sub}").chars().take(52).collect::<String>(),
        "iat": 1_700_000_000u64,
        "iss": iss,
        "name": name,
        "sub": sub,
        "nats": nats,
    })
}

/// A `.creds` file for a new user of `account`.
fn creds(dir: &Path, file: &str, account: &nkeys::KeyPair) -> anyhow::Result<std::path::PathBuf> {
    let user = nkeys::KeyPair::new_user();
    let token = jwt(
        account,
        claims(
            "jetplug",
            &account.public_key(),
            &user.public_key(),
            serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
        ),
    )?;
    let seed = user.seed().map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join(file);
    std::fs::write(
        &path,
        format!(
            "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )?;
    Ok(path)
}

/// `.creds` (JWT + NKey) against a server in operator mode, its account
/// preloaded: a user of that account gets in; one of an unknown account and
/// a file that is not a creds file are refused naming `nats.credentials`.
#[tokio::test]
async fn creds_file_in_operator_mode() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream in operator mode needs a system account.
    let system = nkeys::KeyPair::new_account();
    let op_jwt = jwt(
        &operator,
        claims(
            "op",
            &operator.public_key(),
            &operator.public_key(),
            serde_json::json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        ),
    )?;
    let sys_jwt = jwt(
        &operator,
        claims(
            "SYS",
            &operator.public_key(),
            &system.public_key(),
            serde_json::json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1}, "type": "account", "version": 2}),
        ),
    )?;
    let limits = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
    });
    let acc_jwt = jwt(
        &operator,
        claims(
            "acc",
            &operator.public_key(),
            &account.public_key(),
            serde_json::json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
        ),
    )?;
    let server = NatsServer::start_with(&format!(
        "operator: {op_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {sys_jwt}\n  {acc}: {acc_jwt}\n}}\n",
        sys = system.public_key(),
        acc = account.public_key()
    ))
    .await?;
    let url = format!("url = \"{}\"", server.url());
    let good = creds(dir.path(), "good.creds", &account)?;
    connect(
        dir.path(),
        &format!("{url}\ncredentials = {}", quoted(&good)),
    )
    .await
    .map_err(anyhow::Error::msg)?;

    let stranger = creds(dir.path(), "stranger.creds", &nkeys::KeyPair::new_account())?;
    refused(
        connect(
            dir.path(),
            &format!("{url}\ncredentials = {}", quoted(&stranger)),
        )
        .await,
        "nats.credentials",
    );
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "not a creds file")?;
    refused(
        connect(
            dir.path(),
            &format!("{url}\ncredentials = {}", quoted(&junk)),
        )
        .await,
        "nats.credentials",
    );

    // NATS_CREDS, with nothing in the file: a one-shot command connects.
    let path = dir.path().join("env.toml");
    std::fs::write(
        &path,
        format!("[nats]\n{url}\n\n[[stream]]\nname = \"EVENTS\"\nsubjects = [\"events.>\"]\n"),
    )?;
    let with_creds = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_jetplug"))
            .args(["streams", "apply", "--config"])
            .arg(&path)
            .env_remove("NATS_TOKEN")
            .env("NATS_CREDS", file)
            .output()
    };
    let ok = with_creds(&good)?;
    assert!(ok.status.success(), "{}", output_text(&ok));
    let wrong = with_creds(&stranger)?;
    let text = output_text(&wrong);
    assert!(!wrong.status.success(), "{text}");
    assert!(text.contains("NATS_CREDS (environment)"), "{text}");
    Ok(())
}
