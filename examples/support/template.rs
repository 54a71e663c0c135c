//! Shared by the load drivers (`latency_probe`, `soak`): a fixture split around its id, so that each request
//! can carry a fresh id while every other byte is sent as captured, signed per request.
#![allow(dead_code)]

use std::path::Path;

use intercom_webhooks::receiving::signature::ClientSecret;

pub struct Template {
    before: Vec<u8>,
    after: Vec<u8>,
    /// The fixture's `app_id` (empty when it has none).
    pub app_id: String,
    secret: ClientSecret,
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
        Ok(Template {
            before: bytes[..at].to_vec(),
            after: bytes[at + needle.len()..].to_vec(),
            app_id: json["app_id"].as_str().unwrap_or_default().to_owned(),
            secret: ClientSecret::new(secret)?,
        })
    }

    /// The body for `id` and its X-Hub-Signature.
    pub fn body(&self, id: &str) -> (Vec<u8>, String) {
        let mut body = Vec::with_capacity(self.before.len() + self.after.len() + id.len() + 2);
        body.extend_from_slice(&self.before);
        body.push(b'"');
        body.extend_from_slice(id.as_bytes());
        body.push(b'"');
        body.extend_from_slice(&self.after);
        let signature = self.secret.sign(&body);
        (body, signature)
    }
}
