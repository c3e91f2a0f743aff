//! Criterion benches of the per-request hot paths, through the library's public API only:
//! frame splitting of backend traffic (`wire::Splitter`), statement classification with a warm
//! cache (`route::classify::ClassifyCache`) and the literal-stripping `fingerprint`, result-cache
//! key derivation (`cache::key::derive`) and PostgreSQL's hash-partition function for shard keys
//! (`shard::hash::partition`). Pure CPU: no sockets, no servers, no files.
//!
//! `cargo bench --bench hot_paths` (add `-- --warm-up-time 1 --measurement-time 2` for a quick run,
//! or a name filter such as `-- split/`).

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pgweir::cache::key::{derive, KeyInput};
use pgweir::route::classify::{fingerprint, ClassifyCache};
use pgweir::shard::hash::{partition, KeyValue};
use pgweir::shard::KeyType;
use pgweir::wire::frame::{put_frame, Step};
use pgweir::wire::{tag, Splitter};

// The session's splitter settings (`session::proto`, private there): server frames up to 1 GiB,
// streamed in pieces above 64 KiB.
const MAX_SERVER_FRAME: usize = 1 << 30;
const STREAM_ABOVE: usize = 64 * 1024;
/// What one socket read brings at most in the large-row case.
const READ_SIZE: usize = 64 * 1024;

/// The server-side `streamable` rule of the session: frames the proxy must see whole.
fn server_streamable(t: u8) -> bool {
    !matches!(t, tag::READY_FOR_QUERY | tag::PARAMETER_STATUS | tag::ERROR_RESPONSE | tag::COPY_IN_RESPONSE)
}

fn row_description(out: &mut BytesMut, column: &str) {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(column.as_bytes());
    body.push(0);
    body.extend_from_slice(&16_400u32.to_be_bytes()); // table oid
    body.extend_from_slice(&3i16.to_be_bytes()); // column number
    body.extend_from_slice(&23u32.to_be_bytes()); // int4
    body.extend_from_slice(&4i16.to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    put_frame(out, b'T', &body);
}

fn data_row(out: &mut BytesMut, value: &[u8]) {
    let mut body = Vec::with_capacity(6 + value.len());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
    body.extend_from_slice(value);
    put_frame(out, tag::DATA_ROW, &body);
}

fn command_complete(out: &mut BytesMut, text: &str) {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    put_frame(out, b'C', &body);
}

fn ready(out: &mut BytesMut) {
    put_frame(out, tag::READY_FOR_QUERY, b"I");
}

/// `answers` pgbench -S answers back to back (RowDescription, DataRow, CommandComplete,
/// ReadyForQuery each), as a server sends them to a pipelining or busy pool.
fn select_only_answers(answers: usize) -> (BytesMut, u64) {
    let mut b = BytesMut::new();
    for i in 0..answers {
        row_description(&mut b, "abalance");
        data_row(&mut b, (i as i64 * 37 - 2500).to_string().as_bytes());
        command_complete(&mut b, "SELECT 1");
        ready(&mut b);
    }
    (b, answers as u64 * 4)
}

/// A range scan's answer: one RowDescription, `rows` small DataRows, CommandComplete, ReadyForQuery.
fn many_rows(rows: usize) -> (BytesMut, u64) {
    let mut b = BytesMut::new();
    row_description(&mut b, "abalance");
    for i in 0..rows {
        data_row(&mut b, (i * 7).to_string().as_bytes());
    }
    command_complete(&mut b, &format!("SELECT {rows}"));
    ready(&mut b);
    (b, rows as u64 + 3)
}

/// Splits every whole frame off the front of `rbuf` as the session's forwarder does (`split_to`
/// per frame, streamed pieces for large frames); returns the frames seen.
fn drain(split: &mut Splitter, rbuf: &mut BytesMut) -> usize {
    let mut frames = 0;
    loop {
        match split.next(rbuf, server_streamable).expect("valid frames") {
            Step::Need(_) => return frames,
            Step::Whole(h) => {
                black_box(rbuf.split_to(h.total));
                frames += 1;
            }
            Step::Partial { head, n } => {
                black_box(rbuf.split_to(n));
                frames += usize::from(head.is_some());
            }
        }
    }
}

/// Walks the frames of `buf` by offset: the splitter's own cost, without buffer handling.
fn walk(buf: &[u8]) -> usize {
    let mut split = Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE);
    let (mut at, mut frames) = (0, 0);
    while let Step::Whole(h) = split.next(&buf[at..], server_streamable).expect("valid frames") {
        black_box(h.tag);
        at += h.total;
        frames += 1;
    }
    frames
}

fn bench_split(c: &mut Criterion) {
    let mut g = c.benchmark_group("split");
    for (name, (buf, frames)) in [("select_only_x100", select_only_answers(100)), ("datarows_x1000", many_rows(1000))] {
        g.throughput(Throughput::Elements(frames));
        g.bench_function(format!("{name}/walk"), |b| b.iter(|| walk(black_box(&buf))));
        g.bench_function(format!("{name}/split_to"), |b| {
            b.iter_batched(
                || buf.clone(),
                |mut rbuf| drain(&mut Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE), &mut rbuf),
                BatchSize::SmallInput,
            )
        });
    }
    // One 1 MiB DataRow (streamed through in pieces) then CommandComplete and ReadyForQuery,
    // arriving in 64 KiB reads; includes copying each read into the read buffer.
    let mut large = BytesMut::new();
    data_row(&mut large, &vec![b'x'; 1 << 20]);
    command_complete(&mut large, "SELECT 1");
    ready(&mut large);
    g.throughput(Throughput::Bytes(large.len() as u64));
    g.bench_function("large_datarow_1MiB/64KiB_reads", |b| {
        b.iter(|| {
            let mut split = Splitter::new(MAX_SERVER_FRAME, STREAM_ABOVE);
            let mut rbuf = BytesMut::with_capacity(2 * READ_SIZE);
            let mut frames = 0;
            for chunk in large.chunks(READ_SIZE) {
                rbuf.extend_from_slice(chunk);
                frames += drain(&mut split, &mut rbuf);
            }
            assert_eq!(frames, 3);
            frames
        })
    });
    g.finish();
}

/// pgbench-style statements with their literals drawn per call.
fn pgbench_texts(i: u64) -> [String; 5] {
    let aid = 1 + (i * 7919) % 100_000;
    let (tid, bid, delta) = (1 + i % 10, 1 + i % 3, (i % 10_001) as i64 - 5000);
    [
        format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
        format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
        format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};"),
        format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};"),
        format!(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);"
        ),
    ]
}

fn bench_classify(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    // 1024 distinct texts of five shapes: every call after the first of a shape is a hit.
    let texts: Vec<String> = (0..1024u64 / 5 + 1).flat_map(pgbench_texts).collect();
    let extra: Vec<String> = Vec::new();
    let mut cache = ClassifyCache::new(10_000);
    for t in &texts {
        cache.classify(t, &extra);
    }
    assert_eq!(cache.len(), 5, "five statement shapes");
    let select = &texts[0];
    g.throughput(Throughput::Elements(1));
    g.bench_function("warm/select_only", |b| {
        let selects: Vec<&String> = texts.iter().step_by(5).collect();
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % selects.len();
            cache.classify(black_box(selects[i]), &extra)
        })
    });
    g.bench_function("warm/tpcb_mix", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % texts.len();
            cache.classify(black_box(&texts[i]), &extra)
        })
    });
    g.bench_function("fingerprint/select_only", |b| b.iter(|| fingerprint(black_box(select))));
    let insert = &texts[4];
    g.bench_function("fingerprint/insert_history", |b| b.iter(|| fingerprint(black_box(insert))));
    g.finish();
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    v.sort();
    v
}

/// A Bind body for the unnamed statement: one binary int8 parameter, binary results.
fn bind_body(aid: i64) -> Vec<u8> {
    let mut b = vec![0, 0]; // portal "", statement ""
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes()); // binary
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&8i32.to_be_bytes());
    b.extend_from_slice(&aid.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&1i16.to_be_bytes());
    b
}

fn bench_cache_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_key");
    g.throughput(Throughput::Elements(1));
    // Tokens as the store makes them: 32 hex digits; one table read plus the database-wide one.
    let versions = vec!["5f0c1e2d3b4a69788796a5b4c3d2e1f0".to_string(), "0123456789abcdef0123456789abcdef".to_string()];
    let simple_settings = settings(&[("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY")]);
    let text = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213";
    g.bench_function("simple/2_settings", |b| {
        b.iter(|| {
            let input = KeyInput {
                database: "postgres",
                user: "app",
                settings: &simple_settings,
                shape: b'Q',
                text: black_box(text.as_bytes()),
                types: b"",
                bind: b"",
            };
            derive(&input, &versions)
        })
    });
    let orm_settings = settings(&[
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("extra_float_digits", "3"),
        ("search_path", "\"$user\", public"),
        ("app.tenant", "tenant-00042"),
    ]);
    let param_text = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let types = 20u32.to_be_bytes(); // int8
    let bind = bind_body(48213);
    g.bench_function("extended/6_settings_1_param", |b| {
        b.iter(|| {
            let input = KeyInput {
                database: "postgres",
                user: "app",
                settings: &orm_settings,
                shape: b'D',
                text: black_box(param_text.as_bytes()),
                types: &types,
                bind: black_box(&bind),
            };
            derive(&input, &versions)
        })
    });
    g.finish();
}

fn bench_shard_hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_hash");
    g.throughput(Throughput::Elements(1));
    let int8 = KeyValue::Int(9_876_543_210);
    let text = KeyValue::Text(b"customer-000042@example.com".to_vec());
    let uuid = KeyType::Uuid.from_text("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").expect("a uuid");
    for (name, key) in [("int8", &int8), ("text_27B", &text), ("uuid", &uuid)] {
        g.bench_function(format!("partition/{name}"), |b| b.iter(|| partition(Some(black_box(key)), black_box(8))));
    }
    // What the router does with a literal: convert it to the column's type, then hash.
    g.bench_function("from_text+partition/int8", |b| {
        b.iter(|| partition(Some(&KeyType::BigInt.from_text(black_box("9876543210")).expect("int8")), 8))
    });
    g.bench_function("from_text+partition/uuid", |b| {
        b.iter(|| {
            let k = KeyType::Uuid.from_text(black_box("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")).expect("uuid");
            partition(Some(&k), 8)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_split, bench_classify, bench_cache_key, bench_shard_hash);
criterion_main!(benches);
