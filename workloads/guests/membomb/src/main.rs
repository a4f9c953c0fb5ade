//! membomb: prints `growing`, then allocates 1 MiB chunks forever, filling
//! each one so the pages are really used, and keeps them all. Under a memory
//! limit `memory.grow` eventually fails; the allocation failure aborts, which
//! is a wasm trap (`unreachable`). Without a limit it stops at the 4 GiB
//! wasm32 ceiling the same way. Nothing else is printed.

use std::hint::black_box;
use std::io::Write;

const CHUNK: usize = 1 << 20;

fn main() {
    println!("growing");
    let _ = std::io::stdout().flush();
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut i: u8 = 0;
    loop {
        i = i.wrapping_add(1);
        let mut chunk = vec![0u8; CHUNK];
        chunk.fill(i | 1);
        chunks.push(black_box(chunk));
        black_box(&chunks);
    }
}
