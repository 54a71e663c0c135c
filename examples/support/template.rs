//! Shared by the load drivers (`latency_probe`, `soak`): a fixture split around its id (and, optionally,
//! its item's id), so that each request can carry a fresh id while every other byte is sent as captured,
//! signed per request.
#![allow(dead_code)]

use std::path::Path;

use intercom_webhooks::receiving::signature::ClientSecret;

/// What fills a hole in the fixture.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hole {
    /// The notification's id.
    Notification,
    /// The item's id: as given, or `obj-<notification id>`.
    Object,
}

pub struct Template {
    /// The fixture's bytes between the holes: `parts.len() == holes.len() + 1`.
    parts: Vec<Vec<u8>>,
    holes: Vec<Hole>,
    /// The fixture's `app_id` (empty when it has none).
    pub app_id: String,
    secret: ClientSecret,
    bytes: Vec<u8>,
    positions: Vec<(usize, usize, Hole)>,
}

/// Where `"<key>": "<value>"` (with or without the space) holds `value`: the value's span, quotes included.
fn find_value(bytes: &[u8], key: &str, value: &str) -> Option<(usize, usize)> {
    [
        format!("\"{key}\": \"{value}\""),
        format!("\"{key}\":\"{value}\""),
    ]
    .iter()
    .find_map(|needle| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .map(|at| {
                let end = at + needle.len();
                (end - value.len() - 2, end)
            })
    })
}

impl Template {
    /// Reads the fixture at `path`; its `id` must appear verbatim as a JSON string.
    pub fn load(path: &Path, secret: &str) -> anyhow::Result<Template> {
        let bytes = std::fs::read(path)?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)?;
        let id = json["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("{} has no string id", path.display()))?;
        let needle = format!("\"{id}\"");
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .ok_or_else(|| anyhow::anyhow!("the id is not found verbatim in {}", path.display()))?;
        let mut template = Template {
            parts: Vec::new(),
            holes: Vec::new(),
            app_id: json["app_id"].as_str().unwrap_or_default().to_owned(),
            secret: ClientSecret::new(secret)?,
            bytes,
            positions: vec![(at, at + needle.len(), Hole::Notification)],
        };
        template.split();
        Ok(template)
    }

    /// Each body is also about a new object: the item's id becomes the one [`Template::body`] is given, or
    /// `obj-<notification id>`, so that every request is a new conversation (contact, …) to the mirror.
    pub fn with_fresh_objects(mut self) -> anyhow::Result<Template> {
        let json: serde_json::Value = serde_json::from_slice(&self.bytes)?;
        let id = json["data"]["item"]["id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("the fixture's item has no string id"))?;
        let (start, end) = find_value(&self.bytes, "id", id)
            .ok_or_else(|| anyhow::anyhow!("the item's id is not found verbatim"))?;
        self.positions.push((start, end, Hole::Object));
        self.split();
        Ok(self)
    }

    fn split(&mut self) {
        self.positions.sort_by_key(|(start, _, _)| *start);
        self.parts.clear();
        self.holes.clear();
        let mut from = 0;
        for (start, end, hole) in &self.positions {
            self.parts.push(self.bytes[from..*start].to_vec());
            self.holes.push(*hole);
            from = *end;
        }
        self.parts.push(self.bytes[from..].to_vec());
    }

    /// The body for the notification `id` and its X-Hub-Signature; with fresh objects, about the object
    /// `object` (`None`: `obj-<id>`).
    pub fn body(&self, id: &str, object: Option<&str>) -> (Vec<u8>, String) {
        let mut body = Vec::with_capacity(self.bytes.len() + 2 * id.len() + 8);
        for (part, hole) in self.parts.iter().zip(&self.holes) {
            body.extend_from_slice(part);
            body.push(b'"');
            match (hole, object) {
                (Hole::Notification, _) => body.extend_from_slice(id.as_bytes()),
                (Hole::Object, Some(object)) => body.extend_from_slice(object.as_bytes()),
                (Hole::Object, None) => {
                    body.extend_from_slice(b"obj-");
                    body.extend_from_slice(id.as_bytes());
                }
            }
            body.push(b'"');
        }
        body.extend_from_slice(self.parts.last().expect("one part more than holes"));
        let signature = self.secret.sign(&body);
        (body, signature)
    }
}
