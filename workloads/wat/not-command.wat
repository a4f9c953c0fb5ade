;; not-command: a valid component that is NOT a WASI command: it does not
;; export wasi:cli/run, only an unrelated function `answer: func() -> u32`.
;; The agent should reject it as an invalid module for a pod.
(component
  (core module $m
    (func (export "answer") (result i32)
      i32.const 42))
  (core instance $i (instantiate $m))
  (func $answer (result u32)
    (canon lift (core func $i "answer")))
  (export "answer" (func $answer)))
