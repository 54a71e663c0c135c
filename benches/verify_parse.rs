//! Time per call of what the receiver does with a delivery before enqueueing it: verify the
//! `X-Hub-Signature` of a real ~10 KB notification and parse its envelope. Goal: < 20 µs. Then what the
//! worker does with one: parse it, and make the mirror's write (the item compressed as gzip, against
//! LZ4, which `serve`'s file keeps).
//! Run with `cargo bench --bench verify_parse`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use intercom_webhooks::processing::mirror::{decode_item, extract, Extracted, ItemCodec};
use intercom_webhooks::receiving::notification::{Envelope, Notification};
use intercom_webhooks::receiving::signature::ClientSecrets;
use std::hint::black_box;

fn fixture() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/notifications/ticket_created.json"
    ))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let body = fixture();
    let one = ClientSecrets::parse("bench-secret").unwrap();
    let two = ClientSecrets::parse("new-secret,bench-secret").unwrap();
    let header = one.primary().sign(&body);

    let mut group = c.benchmark_group("receiver");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("verify+parse (ticket_created.json, 1 secret)", |b| {
        b.iter(|| {
            one.verify(Some(black_box(header.as_bytes())), black_box(&body))
                .unwrap();
            Envelope::parse(black_box(&body)).unwrap()
        })
    });
    group.bench_function("verify+parse (2 secrets, matching the second)", |b| {
        b.iter(|| {
            two.verify(Some(black_box(header.as_bytes())), black_box(&body))
                .unwrap();
            Envelope::parse(black_box(&body)).unwrap()
        })
    });
    group.bench_function("verify only", |b| {
        b.iter(|| {
            one.verify(Some(black_box(header.as_bytes())), black_box(&body))
                .unwrap()
        })
    });
    group.bench_function("envelope parse only", |b| {
        b.iter(|| Envelope::parse(black_box(&body)).unwrap())
    });
    group.finish();

    let mut worker = c.benchmark_group("worker");
    worker.throughput(Throughput::Bytes(body.len() as u64));
    worker.bench_function("notification parse + typed item", |b| {
        b.iter(|| {
            let n = Notification::parse(black_box(&body)).unwrap();
            n.typed_item()
        })
    });
    worker.finish();

    let replied = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/events/notifications/conversation_user_replied.json"
    ))
    .unwrap();
    let notification = Notification::parse(&replied).unwrap();
    let Extracted::Write(write) = extract(&notification) else {
        panic!("conversation_user_replied.json is mirrored");
    };
    let item = serde_json::to_vec(&notification.data["item"]).unwrap();
    let mut mirror = c.benchmark_group("mirror");
    mirror.throughput(Throughput::Bytes(item.len() as u64));
    mirror.bench_function("extract the write (conversation_user_replied.json)", |b| {
        b.iter(|| extract(black_box(&notification)))
    });
    mirror.bench_function("item compressed: gzip", |b| {
        b.iter(|| ItemCodec::Gzip.encode(black_box(&item)))
    });
    mirror.bench_function("item compressed: LZ4 (serve's file)", |b| {
        b.iter(|| ItemCodec::Lz4.encode(black_box(&item)))
    });
    let stored = write.item.clone().unwrap();
    mirror.bench_function("item decoded: gzip", |b| {
        b.iter(|| decode_item(&write.key, black_box(&stored)).unwrap())
    });
    mirror.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
