;; reactor: a core module with no _start (so not a WASI command). It exports
;; memory and `add: (i32, i32) -> i32`. The agent should reject it for a pod.
(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32)
    local.get 0
    local.get 1
    i32.add))
