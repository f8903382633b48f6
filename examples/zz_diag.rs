use std::hint::black_box;
use std::time::Instant;
use deploykit::flags::{Context, FileFormat, FlagEngine};
fn main() {
    let text = std::fs::read_to_string("benches/data/flags/deploykit.json").unwrap();
    let engine = FlagEngine::with_flags(FileFormat::Json.parse(&text, "x").unwrap()).unwrap();
    let ctx = Context::new().user_id("u2").property("email", "ann@example.com").property("appVersion", "2.5.1");
    let flag = std::env::args().nth(1).unwrap();
    let n: u64 = std::env::args().nth(2).map_or(200_000_000, |n| n.parse().unwrap());
    let t = Instant::now();
    for _ in 0..n { black_box(engine.is_enabled(black_box(&flag), black_box(&ctx))); }
    println!("{flag}: engine {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
}
