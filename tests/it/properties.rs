//! Property tests of the pure parts: signatures and parsers.

use intercom_webhooks::processing::models::Item;
use intercom_webhooks::receiving::notification::{Envelope, Notification};
use intercom_webhooks::receiving::signature::{ClientSecret, ClientSecrets, SignatureError};
use proptest::prelude::*;

fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_\\-]{1,48}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_body_signed_with_any_configured_secret_verifies(
        secrets in prop::collection::vec(secret(), 1..4),
        pick in any::<prop::sample::Index>(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let configured = ClientSecrets::parse(&secrets.join(",")).unwrap();
        let index = pick.index(secrets.len());
        let header = ClientSecret::new(secrets[index].clone()).unwrap().sign(&body);
        let verified = configured.verify(Some(header.as_bytes()), &body).unwrap();
        // The first matching secret is reported (the same secret may be listed twice).
        prop_assert_eq!(&secrets[verified.secret_index], &secrets[index]);
    }

    #[test]
    fn any_single_byte_change_of_body_or_signature_fails(
        secret in secret(),
        body in prop::collection::vec(any::<u8>(), 1..1024),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        in_signature in any::<bool>(),
    ) {
        let secrets = ClientSecrets::parse(&secret).unwrap();
        let header = secrets.primary().sign(&body);
        if in_signature {
            let mut h = header.into_bytes();
            // Change one hex digit of the digest to another hex digit (case changes are not changes).
            let i = 5 + position.index(40);
            let digits = b"0123456789abcdef";
            let current = digits.iter().position(|d| *d == h[i]).unwrap();
            h[i] = digits[(current + 1 + (flip as usize % 15)) % 16];
            prop_assert_eq!(secrets.verify(Some(&h), &body), Err(SignatureError::Mismatch));
        } else {
            let mut changed = body.clone();
            let i = position.index(changed.len());
            changed[i] ^= flip;
            prop_assert_eq!(secrets.verify(Some(header.as_bytes()), &changed), Err(SignatureError::Mismatch));
        }
    }

    #[test]
    fn the_parsers_never_panic_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Envelope::parse(&body);
        let _ = Notification::parse(&body);
    }

    #[test]
    fn the_parsers_never_panic_on_arbitrary_json(value in json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let _ = Envelope::parse(&bytes);
        if let Ok(n) = Notification::parse(&bytes) {
            let _ = n.typed_item();
            let _ = intercom_webhooks::processing::handlers::summarize(&n);
        }
        let _ = Item::parse(&value);
        let wrapped = serde_json::json!({"id": "notif_p", "topic": "conversation.user.created", "data": {"item": value}});
        let n = Notification::parse(&serde_json::to_vec(&wrapped).unwrap()).unwrap();
        let _ = intercom_webhooks::processing::handlers::summarize(&n);
    }
}

/// Arbitrary JSON, biased towards the keys the models read.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("type".to_string()),
        Just("id".to_string()),
        Just("topic".to_string()),
        Just("item".to_string()),
        Just("data".to_string()),
        Just("source".to_string()),
        Just("contacts".to_string()),
        Just("conversation_parts".to_string()),
        Just("ticket_state".to_string()),
        Just("created_at".to_string()),
        Just("tag".to_string()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        prop_oneof![
            Just("conversation".to_string()),
            Just("contact".to_string()),
            Just("contact_tag".to_string()),
            Just("ticket".to_string()),
            Just("user".to_string()),
            ".{0,12}",
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
