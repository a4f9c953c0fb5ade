//! files WRITE_DIR [READ_PATH...]
//!
//! 1. Writes WRITE_DIR/out.txt containing "written by files\n", reads it back
//!    and prints `wrote WRITE_DIR/out.txt: written by files`.
//!    WRITE_DIR `-` skips this step. A failure prints
//!    `error writing PATH: ERROR` (or `error reading PATH: ERROR`) to stderr
//!    and exits 2 at once.
//! 2. For each READ_PATH prints `read PATH: CONTENTS` (contents trimmed). A
//!    failed read prints `error reading PATH: ERROR` to stderr; the remaining
//!    paths are still tried, and the exit code becomes 2.
//! 3. If env var FILES_TRY is set, reads that path and prints
//!    `FILES_TRY ok: CONTENTS` (trimmed) or `FILES_TRY denied: ERROR`; this
//!    never changes the exit code. Used to show a guest cannot read host files
//!    outside its preopened directories.
//! Exit code: 0, or 2 as above (also 2 when WRITE_DIR is missing).

use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(write_dir) = args.get(1) else {
        eprintln!("usage: files WRITE_DIR|- [READ_PATH...]");
        std::process::exit(2);
    };

    if write_dir != "-" {
        let path = Path::new(write_dir).join("out.txt");
        let shown = path.display();
        if let Err(e) = std::fs::write(&path, "written by files\n") {
            eprintln!("error writing {shown}: {e}");
            std::process::exit(2);
        }
        match std::fs::read_to_string(&path) {
            Ok(s) => println!("wrote {shown}: {}", s.trim()),
            Err(e) => {
                eprintln!("error reading {shown}: {e}");
                std::process::exit(2);
            }
        }
    }

    let mut failed = false;
    for p in args.iter().skip(2) {
        match std::fs::read_to_string(p) {
            Ok(s) => println!("read {p}: {}", s.trim()),
            Err(e) => {
                eprintln!("error reading {p}: {e}");
                failed = true;
            }
        }
    }

    if let Some(p) = std::env::var_os("FILES_TRY") {
        match std::fs::read_to_string(&p) {
            Ok(s) => println!("FILES_TRY ok: {}", s.trim()),
            Err(e) => println!("FILES_TRY denied: {e}"),
        }
    }

    if failed {
        std::process::exit(2);
    }
}
