//! spinner: a pure CPU burner. Prints nothing and never calls the host: an
//! endless loop of integer arithmetic on a black_box'd state. It only ends when
//! the host interrupts it (epoch deadline, fuel, or killing the instance).

use std::hint::black_box;

fn main() {
    let mut x: u64 = black_box(0x9E37_79B9_7F4A_7C15);
    let mut n: u64 = 0;
    loop {
        // xorshift64 step plus a counter: real work the optimiser cannot drop.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        n = n.wrapping_add(x | 1);
        black_box((x, n));
    }
}
