//! exit3: prints `exiting with 3`, then exits with status 3 (WASI proc_exit).

fn main() {
    println!("exiting with 3");
    std::process::exit(3);
}
