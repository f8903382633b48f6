//! Five layers of 10,000 keys each (100 tables of 100 keys, TOML text), parsed and merged
//! with provenance for every value, side by side with figment 0.10 merging the same five
//! TOML layers (figment tags every value with its provider's metadata).
//!
//! What is timed on each side: parsing the five TOML texts and merging them. Reading a value
//! back is not timed: figment's every read (`find_value`, `extract`) first clones the whole
//! merged tree, which deploykit's borrowed `get` does not, so timing it would charge figment
//! for a copy that is not merging.
//!
//! The two sides parse with different TOML parsers: deploykit with `toml` 1.2 (its
//! `de::DeTable` with spans, for provenance), figment with `toml` 0.8 (`toml::from_str`
//! inside `Toml::string`). Parser speed is part of both figures.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use deploykit::config::{Format, Layers, MergePolicy, parse};
use figment::Figment;
use figment::providers::{Format as _, Toml};

fn layer(index: usize) -> String {
    let mut text = String::new();
    for table in 0..100 {
        text.push_str(&format!("[section_{table}]\n"));
        for key in 0..100 {
            // Layers overlap: each sets every key, with its own values and types kept equal.
            text.push_str(&format!(
                "key_{key} = {}\n",
                index * 1_000_000 + table * 100 + key
            ));
        }
    }
    text
}

/// Parses and merges the layers; the merged tree.
fn deploykit_merge(layers: &[String]) -> deploykit::config::Node {
    let mut all = Layers::new();
    for (index, text) in layers.iter().enumerate() {
        let name = format!("layer {index}");
        all.push(
            parse(text, Format::Toml, &name, &format!("layer{index}.toml")).expect("valid"),
            MergePolicy::default(),
        );
    }
    all.merge().expect("no conflicts")
}

/// The line the last key came from, read back from a merge (untimed).
fn deploykit_read(merged: &deploykit::config::Node) -> usize {
    merged
        .get("section_99.key_99")
        .map_or(0, |node| node.origin.line.unwrap_or(0) as usize)
}

/// Parses and merges the layers (figment does both eagerly in `merge`).
fn figment_merge(layers: &[String]) -> Figment {
    let mut figment = Figment::new();
    for text in layers {
        figment = figment.merge(Toml::string(text));
    }
    figment
}

/// The name of the provider the last key came from, read back from a merge (untimed).
fn figment_read(figment: &Figment) -> usize {
    let value = figment.find_value("section_99.key_99").expect("merged");
    figment
        .get_metadata(value.tag())
        .map_or(0, |metadata| metadata.name.len())
}

/// Times `merge` only; `read` runs after each timing, so an answer is still checked.
fn merge_only<T>(iters: u64, merge: impl Fn() -> T, read: impl Fn(&T) -> usize) -> std::time::Duration {
    let mut total = std::time::Duration::ZERO;
    for _ in 0..iters {
        let start = std::time::Instant::now();
        let merged = black_box(merge());
        total += start.elapsed();
        assert!(read(&merged) > 0);
    }
    total
}

fn config_merge(c: &mut Criterion) {
    let layers: Vec<String> = (0..5).map(layer).collect();
    let mut group = c.benchmark_group("config_merge");
    group.sample_size(20);
    group.bench_function("deploykit", |b| {
        b.iter_custom(|iters| merge_only(iters, || deploykit_merge(black_box(&layers)), deploykit_read))
    });
    group.bench_function("figment", |b| {
        b.iter_custom(|iters| merge_only(iters, || figment_merge(black_box(&layers)), figment_read))
    });
    group.finish();
}

criterion_group!(benches, config_merge);
criterion_main!(benches);
