//! The DLQ router: receives a pipeline's dead letters (the original message
//! with `Jetplug-*` headers) and publishes them to the DLQ stream.
//!
//! The default subject is `dlq.<domain>.<pipeline>`, where `domain` is the
//! first token of the original subject. Rules in the config pick another
//! subject template by reason or by original subject:
//!
//! ```toml
//! config = { "rule.1" = "reason~not JSON => dlq.{domain}.malformed",
//!            "rule.2" = "subject=focus.> => dlq.focus.{pipeline}",
//!            default = "dlq.{domain}.{pipeline}" }
//! ```
//!
//! Rules are tried in key order; `reason~TEXT` matches a reason containing
//! TEXT, `subject=PATTERN` a subject matching the NATS pattern. Templates may
//! use `{domain}`, `{pipeline}`, `{stream}` (lowercase) and `{tenant}`.
//! Publishing uses a message id per (stream, sequence, pipeline), so a dead
//! letter is stored once even if it is routed again.

use jetplug_sdk::publish::{self, Outgoing};
use jetplug_sdk::{Config, ConfigError, Decision, Message, Plugin, log};

enum Match {
    Reason(String),
    Subject(String),
}

struct Rule {
    when: Match,
    template: String,
}

struct Router {
    rules: Vec<Rule>,
    default: String,
}

impl Plugin for Router {
    fn init(config: &Config) -> Result<Self, ConfigError> {
        let mut pairs: Vec<(&str, &str)> = config.iter().collect();
        pairs.sort();
        let mut router = Router {
            rules: Vec::new(),
            default: "dlq.{domain}.{pipeline}".into(),
        };
        for (k, v) in pairs {
            if k == "default" {
                router.default = v.to_owned();
            } else if k.starts_with("rule.") {
                router.rules.push(parse_rule(k, v)?);
            } else {
                return Err(ConfigError::key(k, "unknown key (known: default, rule.N)"));
            }
        }
        Ok(router)
    }

    fn handle(&mut self, message: &Message) -> Decision {
        route(self, message)
    }
}

fn parse_rule(key: &str, text: &str) -> Result<Rule, ConfigError> {
    let (cond, template) = text.split_once("=>").ok_or_else(|| {
        ConfigError::key(
            key,
            "expected `reason~TEXT => TEMPLATE` or `subject=PATTERN => TEMPLATE`",
        )
    })?;
    let cond = cond.trim();
    let when = if let Some(t) = cond.strip_prefix("reason~") {
        Match::Reason(t.trim().to_owned())
    } else if let Some(p) = cond.strip_prefix("subject=") {
        Match::Subject(p.trim().to_owned())
    } else {
        return Err(ConfigError::key(
            key,
            format!("condition `{cond}` must start with `reason~` or `subject=`"),
        ));
    };
    Ok(Rule {
        when,
        template: template.trim().to_owned(),
    })
}

fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn route(routes: &Router, m: &Message) -> Decision {
    let original = m.header("Jetplug-Original-Subject").unwrap_or("");
    let original = if original.is_empty() {
        m.subject.as_str()
    } else {
        original
    };
    let reason = m.header("Jetplug-Reason").unwrap_or("");
    let pipeline = m.header("Jetplug-Pipeline").unwrap_or("");
    let template = routes
        .rules
        .iter()
        .find(|r| match &r.when {
            Match::Reason(t) => reason.contains(t.as_str()),
            Match::Subject(p) => subject_matches(p, original),
        })
        .map(|r| r.template.as_str())
        .unwrap_or(&routes.default);
    let domain = original.split('.').next().unwrap_or("unknown");
    let subject = template
        .replace("{domain}", domain)
        .replace(
            "{pipeline}",
            if pipeline.is_empty() {
                "unknown"
            } else {
                pipeline
            },
        )
        .replace("{stream}", &m.stream.to_lowercase())
        .replace("{tenant}", &m.tenant);
    let msg = Outgoing {
        subject: subject.clone(),
        headers: m.headers.clone(),
        payload: m.payload.clone(),
        message_id: Some(format!(
            "jetplug-dlq:{}:{}:{}",
            m.stream, m.stream_seq, pipeline
        )),
    };
    match publish::publish(&msg) {
        Ok(_) => Decision::ack(),
        Err(e) => {
            log::warn(format!("dlq-router: publishing to `{subject}` failed: {e}"));
            Decision::retry()
        }
    }
}

jetplug_sdk::export!(Router);
