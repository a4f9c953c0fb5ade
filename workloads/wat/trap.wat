;; trap: a WASI preview1 command. _start prints "about to trap\n" to stdout
;; with fd_write, then executes `unreachable` (a wasm trap).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec at 0: { buf = 16, len = 14 }; nwritten at 8; text at 16
  (data (i32.const 0) "\10\00\00\00\0e\00\00\00")
  (data (i32.const 16) "about to trap\n")
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))
