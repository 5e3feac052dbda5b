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

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use std::cell::RefCell;

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::log::{Level, log};
use jetplug::plugin::publish::{self, Outgoing};

enum Match {
    Reason(String),
    Subject(String),
}

struct Rule {
    when: Match,
    template: String,
}

struct Routes {
    rules: Vec<Rule>,
    default: String,
}

thread_local! {
    static ROUTES: RefCell<Routes> = RefCell::new(Routes {
        rules: Vec::new(),
        default: "dlq.{domain}.{pipeline}".into(),
    });
}

struct Router;

impl Guest for Router {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let mut config = config;
        config.sort();
        let mut routes = Routes {
            rules: Vec::new(),
            default: "dlq.{domain}.{pipeline}".into(),
        };
        for (k, v) in config {
            if k == "default" {
                routes.default = v;
            } else if k.starts_with("rule.") {
                routes.rules.push(parse_rule(&k, &v)?);
            } else {
                return Err(format!("unknown config key `{k}` (known: default, rule.N)"));
            }
        }
        ROUTES.with_borrow_mut(|r| *r = routes);
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        ROUTES.with_borrow(|routes| batch.iter().map(|m| route(routes, m)).collect())
    }
}

fn parse_rule(key: &str, text: &str) -> Result<Rule, String> {
    let (cond, template) = text.split_once("=>").ok_or_else(|| {
        format!("{key}: expected `reason~TEXT => TEMPLATE` or `subject=PATTERN => TEMPLATE`")
    })?;
    let cond = cond.trim();
    let when = if let Some(t) = cond.strip_prefix("reason~") {
        Match::Reason(t.trim().to_owned())
    } else if let Some(p) = cond.strip_prefix("subject=") {
        Match::Subject(p.trim().to_owned())
    } else {
        return Err(format!(
            "{key}: condition `{cond}` must start with `reason~` or `subject=`"
        ));
    };
    Ok(Rule {
        when,
        template: template.trim().to_owned(),
    })
}

fn header<'a>(m: &'a Message, name: &str) -> &'a str {
    m.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
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

fn route(routes: &Routes, m: &Message) -> Decision {
    let original = header(m, "Jetplug-Original-Subject");
    let original = if original.is_empty() {
        m.subject.as_str()
    } else {
        original
    };
    let reason = header(m, "Jetplug-Reason");
    let pipeline = header(m, "Jetplug-Pipeline");
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
        Ok(_) => Decision::Ack,
        Err(e) => {
            log(
                Level::Warn,
                &format!("dlq-router: publishing to `{subject}` failed: {e:?}"),
            );
            Decision::Retry(None)
        }
    }
}

export!(Router);
