//! The README's list of built-in handlers and their topics is generated from the router, so it cannot
//! drift from the code. `UPDATE_README=1 cargo test --test it readme::` rewrites it.

use std::sync::Arc;
use std::time::Duration;

use intercom_webhooks::processing::handlers::{
    default_router, Builtins, ForwardSettings, NotifySettings, DEFAULT_NOTIFY_TOPICS,
};
use intercom_webhooks::processing::mirror::MirrorHandler;

const START: &str =
    "<!-- built-in handlers: generated from the router by tests/it/readme.rs (UPDATE_README=1 cargo test --test it readme::) -->\n";
const END: &str = "<!-- end of built-in handlers -->\n";

/// The table the README holds between the two markers.
fn generated() -> String {
    let notify = NotifySettings {
        url: "https://hooks.example.com/services/T/B/x".into(),
        topics: DEFAULT_NOTIFY_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
        timeout: Duration::from_secs(5),
        rate_per_second: 1.0,
    };
    let dir = tempfile::tempdir().unwrap();
    let db = intercom_webhooks::local::Db::open(dir.path().join("readme.db")).unwrap();
    let mirror = MirrorHandler::new(Arc::new(intercom_webhooks::local::SqliteMirror::new(db)));
    // One forward target with the default topics stands for all nine.
    let forward = ForwardSettings {
        index: 1,
        url: "https://crm.example.com/intercom".into(),
        topics: vec!["*".into()],
        secret: intercom_webhooks::receiving::signature::ClientSecret::new("s").unwrap(),
        timeout: Duration::from_secs(10),
        rate_per_second: 50.0,
    };
    let router = default_router(Builtins {
        notify: Some(notify),
        forwards: vec![forward],
        mirror: Some(mirror),
        others: vec![(vec!["*".into()], eventbridge())],
    })
    .unwrap();
    let quoted = |patterns: &[String]| {
        patterns
            .iter()
            .map(|p| format!("`{p}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut table = String::from("| handler | on | topics |\n|---|---|---|\n");
    for (name, patterns) in router.by_handler() {
        let row = match name.as_str() {
            "eventbridge" => format!(
                "| `eventbridge` | the worker Lambda when `EVENT_BUS_NAME` is set | `EVENTBRIDGE_TOPICS`; by default {} |\n",
                quoted(&patterns)
            ),
            "forward_1" => format!(
                "| `forward_1` … `forward_9` | when `FORWARD_<n>_URL` is set | `FORWARD_<n>_TOPICS`; by default {} |\n",
                quoted(&patterns)
            ),
            "mirror" => format!(
                "| `mirror` | `serve` (unless `--no-mirror`); the worker Lambda when `MIRROR_TABLE` is set | {} (whole objects of type conversation, contact, ticket, company) |\n",
                quoted(&patterns)
            ),
            "notify" => format!(
                "| `notify` | when `NOTIFY_WEBHOOK_URL` is set | `NOTIFY_TOPICS`; by default {} |\n",
                quoted(&patterns)
            ),
            _ => format!("| `{name}` | always | {} |\n", quoted(&patterns)),
        };
        table.push_str(&row);
    }
    table
}

#[test]
fn the_readme_lists_every_built_in_handler_with_the_topics_the_router_gives_it() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme.find(START).expect("the README has the start marker") + START.len();
    let end = start + readme[start..].find(END).expect("the README has the end marker");
    let expected = generated();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{expected}{}", &readme[..start], &readme[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        expected,
        "the README's handler list differs from the router: run UPDATE_README=1 cargo test --test it readme::"
    );
    for topic in ["contact.deleted", "ticket.created", "conversation.admin.replied"] {
        assert!(readme[start..end].contains(&format!("`{topic}`")), "{topic}");
    }
}

/// The EventBridge publisher as the worker Lambda registers it (the client is never called here).
fn eventbridge() -> Arc<dyn intercom_webhooks::processing::handler::Handler> {
    let config = aws_sdk_eventbridge::Config::builder()
        .behavior_version(aws_sdk_eventbridge::config::BehaviorVersion::latest())
        .region(aws_sdk_eventbridge::config::Region::new("us-east-1"))
        .http_client(intercom_webhooks::aws::https_client())
        .build();
    Arc::new(intercom_webhooks::aws::eventbridge::EventBridgeHandler::new(
        aws_sdk_eventbridge::Client::from_conf(config),
        intercom_webhooks::aws::eventbridge::EventBridgeSettings {
            bus: "default".into(),
            source: "intercom".into(),
            topics: vec!["*".into()],
        },
    ))
}
