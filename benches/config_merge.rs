//! Five layers of 10,000 keys each (100 tables of 100 keys, TOML text), parsed and merged
//! with provenance for every value, side by side with figment 0.10 merging the same five
//! TOML layers (figment tags every value with its provider's metadata).
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

fn deploykit_merge(layers: &[String]) -> usize {
    let mut all = Layers::new();
    for (index, text) in layers.iter().enumerate() {
        let name = format!("layer {index}");
        all.push(
            parse(text, Format::Toml, &name, &format!("layer{index}.toml")).expect("valid"),
            MergePolicy::default(),
        );
    }
    let merged = all.merge().expect("no conflicts");
    merged
        .get("section_99.key_99")
        .map_or(0, |node| node.origin.line.unwrap_or(0) as usize)
}

fn figment_merge(layers: &[String]) -> usize {
    let mut figment = Figment::new();
    for text in layers {
        figment = figment.merge(Toml::string(text));
    }
    let value = figment.find_value("section_99.key_99").expect("merged");
    figment
        .get_metadata(value.tag())
        .map_or(0, |metadata| metadata.name.len())
}

fn config_merge(c: &mut Criterion) {
    let layers: Vec<String> = (0..5).map(layer).collect();
    assert!(deploykit_merge(&layers) > 0 && figment_merge(&layers) > 0);
    let mut group = c.benchmark_group("config_merge");
    group.sample_size(20);
    group.bench_function("deploykit", |b| b.iter(|| deploykit_merge(black_box(&layers))));
    group.bench_function("figment", |b| b.iter(|| figment_merge(black_box(&layers))));
    group.finish();
}

criterion_group!(benches, config_merge);
criterion_main!(benches);
