//! Tiny WASI preview1 commands (and import-free command components) written in WAT.

/// Writes "hello from wasm\n" to stdout and "oops\n" to stderr, then returns.
pub(super) const HELLO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm\n")
  (data (i32.const 32) "oops\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 5))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

/// Exits with `proc_exit(3)`.
pub(super) const EXIT_3: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 3))))
"#;

/// Hits `unreachable` inside a named function.
pub(super) const TRAP: &str = r#"
(module
  (memory (export "memory") 1)
  (func $crash unreachable)
  (func (export "_start") (call $crash)))
"#;

/// Exports only a function: a library ("reactor") module, not a command.
pub(super) const REACTOR: &str = r#"
(module
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
"#;

/// Grows memory by 1 MiB at a time until refused, then aborts like a real allocator.
pub(super) const GROW_UNTIL_REFUSED: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
      (br $grow))))
"#;

/// Grows memory until refused, then exits with code 12 (ENOMEM) instead of trapping.
pub(super) const GROW_THEN_EXIT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $grow
      (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1))
        (then (call $proc_exit (i32.const 12))))
      (br $grow))))
"#;

/// Declares a 32 MiB initial memory: instantiation itself exceeds a 16 MiB limit.
pub(super) const BIG_INITIAL_MEMORY: &str = r#"
(module
  (memory (export "memory") 512)
  (func (export "_start")))
"#;

/// Declares a table beyond the hard element cap.
pub(super) const HUGE_TABLE: &str = r#"
(module
  (memory (export "memory") 1)
  (table 2000000 funcref)
  (func (export "_start")))
"#;

/// Writes "started\n", then spins forever.
pub(super) const SPIN: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "started\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop $forever (br $forever))))
"#;

/// Spins forever, writing one "." to stdout every 2^20 iterations: a progress counter.
pub(super) const COUNTING_SPIN: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) ".")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 1))
    (loop $spin
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (i32.eqz (i32.and (local.get $i) (i32.const 0xfffff)))
        (then (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
      (br $spin))))
"#;

/// Writes "started\n", then sleeps 60 s in `poll_oneoff` (a blocking host call).
pub(super) const SLEEP_60S: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "started\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; One clock subscription at 256: userdata 0, tag 0 (clock), id 1 (monotonic),
    ;; timeout 60 s relative, precision 0, flags 0. Events go to 512, count to 8.
    (i64.store (i32.const 256) (i64.const 0))
    (i32.store8 (i32.const 264) (i32.const 0))
    (i32.store (i32.const 272) (i32.const 1))
    (i64.store (i32.const 280) (i64.const 60000000000))
    (i64.store (i32.const 288) (i64.const 0))
    (i32.store16 (i32.const 296) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 256) (i32.const 512) (i32.const 1) (i32.const 8)))))
"#;

/// Writes its argv buffer, then its environ buffer, to stdout (NUL-separated, as given).
pub(super) const ARGS_AND_ENV: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $dump (param $len i32)
    (i32.store (i32.const 8) (i32.const 4096))
    (i32.store (i32.const 12) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 16))))
  (func (export "_start")
    (drop (call $args_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $args_get (i32.const 1024) (i32.const 4096)))
    (call $dump (i32.load (i32.const 4)))
    (drop (call $environ_sizes_get (i32.const 0) (i32.const 4)))
    (drop (call $environ_get (i32.const 1024) (i32.const 4096)))
    (call $dump (i32.load (i32.const 4)))))
"#;

/// Creates "out.txt" in the first preopen (fd 3) and writes "data" to it; exits with the
/// WASI errno if `path_open` fails.
pub(super) const CREATE_FILE: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "out.txt")
  (data (i32.const 32) "data")
  (func (export "_start") (local $errno i32)
    ;; oflags 1 = O_CREAT; rights 64 = FD_WRITE.
    (local.set $errno
      (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7)
        (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 100)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 4))
    (local.set $errno
      (call $fd_write (i32.load (i32.const 100)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $errno) (then (call $proc_exit (local.get $errno))))))
"#;

/// An import-free command component whose `run` body is `$body` (a core function returning
/// i32: 0 is `ok`, 1 is `err`).
pub(super) fn command_component(body: &str) -> String {
    format!(
        r#"
(component
  (core module $m
    (func (export "run") (result i32) {body}))
  (core instance $i (instantiate $m))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
"#
    )
}

/// A component that only exports an (empty) wasi:http handler interface.
pub(super) const HTTP_COMPONENT: &str = r#"
(component
  (instance $handler)
  (export "wasi:http/incoming-handler@0.2.0" (instance $handler)))
"#;
