#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
fn main() {
    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![0u8; i * 100]).collect();
    let mut m = std::collections::HashMap::new();
    for i in 0..1000 {
        m.insert(i, i.to_string());
    }
    let s = tracealloc::take_snapshot().unwrap();
    for st in s.statistics(tracealloc::GroupBy::Traceback) {
        let tb = &st.traceback;
        if !tb.call_site().filename.starts_with("examples/") || std::env::var("ALL").is_ok() {
            println!("== {st}");
            for f in tb.machinery() {
                println!("   m {} {}", f, f.function);
            }
            for f in tb.frames() {
                println!("   f {} {}", f, f.function);
            }
        }
    }
    std::hint::black_box((v, m));
}
